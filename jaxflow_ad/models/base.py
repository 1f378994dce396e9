"""The small interface between methods and the engine.

A method is built from a ``ConfigDict`` and offers:

* ``init(rng, image_shape) -> State``: every variable it needs, in one pytree.
* ``stages``: one or more :class:`Stage` s. Each has a pure, *global* train step
  ``(state, batch, rng) -> (state, metrics)``: it is written as if the whole
  global batch sat on one device. The engine jits it with the batch sharded over
  the mesh axis ``"batch"`` and the state replicated, and XLA inserts the
  collectives (batch statistics, pairwise losses across devices and the gradient
  all-reduce all come out exactly as on one device).
* ``fit_statistics(state, batches) -> State``: a pass over the training images
  after training (PyramidFlow's latent template, a memory bank, ...).
* ``score(state, images) -> (pixel_map [B,H,W], image_score [B])``.
* ``artifacts(state) -> {name: HxWx3 float image in [0,1]}``: pictures for the
  report (PyramidFlow's image template); may be empty.

Images handed to a method are float32 NHWC in [0, 1]; each method normalises
them itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import jax
import numpy as np
import optax
from flax import struct

PyTree = Any
Batch = Mapping[str, jax.Array]


class State(struct.PyTreeNode):
    """Everything a method carries between steps; checkpointed as one pytree.

    Attributes:
      step: global step counter (int32 scalar).
      params: trainable parameters (what the optimizer updates).
      model_state: non-trainable variables, e.g. ``{"volume_norm": ...}``,
        ``{"batch_stats": ...}``, ``{"constants": ...}`` (frozen buffers).
      opt_state: optax state for the current stage.
      stats: statistics fitted after training (template, memory bank); ``{}`` before.
    """

    step: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    stats: PyTree


def host_identity(images: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Default host-side batch preparation: the images as they are."""
    del rng
    return {"image": images}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage.

    Attributes:
      name: shown in logs and used in checkpoint metadata.
      epochs: passes over the training split.
      train_step: pure global step ``(state, batch, rng) -> (state, metrics)``.
      tx: the optimizer of this stage (``init_opt`` re-initialises ``opt_state``
        with it when a stage starts).
      prepare_batch: host-side NumPy ``(images, np_rng) -> batch dict``, e.g.
        anomaly synthesis; runs before the batch is sharded.
    """

    name: str
    epochs: int
    train_step: Callable[[State, Batch, jax.Array], tuple[State, dict]]
    tx: optax.GradientTransformation
    prepare_batch: Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]] = host_identity

    def init_opt(self, state: State) -> State:
        return state.replace(opt_state=self.tx.init(state.params))


class Method(Protocol):
    name: str
    stages: tuple[Stage, ...]

    def init(self, rng: jax.Array, image_shape: tuple[int, int, int]) -> State: ...

    def fit_statistics(self, state: State, batches: Iterable[np.ndarray]) -> State: ...

    def score(self, state: State, images: jax.Array) -> tuple[jax.Array, jax.Array]: ...

    def artifacts(self, state: State) -> dict[str, np.ndarray]: ...
