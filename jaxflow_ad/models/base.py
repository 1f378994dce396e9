"""The contract between methods and the engine.

::

    Method                                   Engine (jaxflow_ad.engine.loop)
    ------                                   -------------------------------
    configure(config, category) -> config    per-category settings (augment "auto" resolved here)
    extractor: FrozenExtractor | None        runs it once per split over the mesh, caches the
                                             features (engine.features), adds them to the samples
                                             as batch["features"][tap]; never checkpointed
    init(rng, example_batch) -> State        one host sample (image uint8 [1,H,W,3], features, ...)
    stages: (Stage, ...)                     trains them in order, one gradient step for all
                                             (gradient_step below), resumable at any step
    statistics_batch(state, batch) -> tree   jitted over the mesh on the training split; the
    fit_statistics(state, outputs) -> stats  host reduces the per-sample outputs; refreshed every
                                             ``stage.refresh_statistics_every`` epochs and after
                                             the last stage; saved with the checkpoint
    score(state, batch, rng) -> (maps, s)    jitted over the mesh; deterministic for a given rng
    artifacts(state) -> {name: image}        pictures for the report
    notes                                    lines for the log and report (stand-in weights, ...)

A :class:`Stage` is a loss, an optimizer built from the steps per epoch, a
trainable mask, host-side batch preparation, and optionally its own batch size
and a statistics refresh period. :func:`gradient_step` is the one training step
of every stage of every method: ``value_and_grad`` of the stage's loss, the
optimizer on the trainable parameters only, the new model state.

Batches are dicts of arrays. What the data reader gives (``image`` uint8
``[B,H,W,3]`` always; ``xyz``, ``depth``, ``foreground`` where a dataset has
them; ``features`` when the method has an extractor) reaches
``Stage.prepare_batch`` on the host, whose output reaches the loss on the
devices. ``score`` and ``statistics_batch`` get the reader's batch as it is.
Images stay uint8 until a method calls :func:`to_float` on the device (4x less
memory and transfer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from jaxflow_ad.errors import ConfigError

PyTree = Any
Batch = Mapping[str, Any]
LossFn = Callable[[PyTree, "State", Batch, jax.Array], tuple[jax.Array, tuple[dict, PyTree]]]


class State(struct.PyTreeNode):
    """Everything a method carries between steps; checkpointed as one pytree.

    Attributes:
      step: global step counter over all stages (int32 scalar).
      params: trainable parameters of every stage (each stage updates its mask of them).
      model_state: non-trainable variables updated by the loss, e.g. ``{"batch_stats": ...}``,
        volume-norm running means, frozen constants. Never a frozen extractor's weights.
      opt_state: optax state of the current stage (over its trainable parameters only).
      stats: fitted statistics (template, memory bank); ``{}`` before the first fit. Saved
        with the checkpoint. Lists, dicts and arrays only (what orbax restores without a target).
    """

    step: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    stats: PyTree


def to_float(images):
    """uint8 images -> float32 in [0, 1] (``x * float32(1/255)``, as the readers did before);
    float images pass through. Works on NumPy and JAX arrays."""
    xp = jnp if isinstance(images, jax.Array) else np
    if images.dtype == np.uint8:
        return images.astype(xp.float32) * xp.float32(1.0 / 255.0)
    return images.astype(xp.float32)


def host_identity(batch: dict, rng: np.random.Generator) -> dict:
    """The default host-side preparation: the batch as it is (images stay uint8)."""
    del rng
    return dict(batch)


def trainable_mask(params: PyTree, prefixes: Sequence[str] | None) -> PyTree:
    """A pytree of Python bools like ``params``: True where a leaf's path starts with one of
    ``prefixes`` ("flow", "cma/encoder", ...; ``None`` = every leaf). Unknown prefixes raise."""
    if prefixes is None:
        return jax.tree_util.tree_map(lambda _: True, params)
    prefixes = tuple(p.strip("/") for p in prefixes)
    paths = []

    def mark(path, _):
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        paths.append(name)
        return any(name == p or name.startswith(p + "/") for p in prefixes)

    mask = jax.tree_util.tree_map_with_path(mark, params)
    unknown = [p for p in prefixes if not any(n == p or n.startswith(p + "/") for n in paths)]
    if unknown:
        top = sorted({n.split("/")[0] for n in paths})
        raise ValueError(f"trainable prefixes {unknown} match no parameter; top-level parameters: {top}")
    return mask


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage.

    Attributes:
      name: shown in logs; metrics are logged as ``train/<name>/<metric>``.
      epochs: passes over the training split.
      loss_fn: pure global ``(params, state, batch, rng) -> (loss, (metrics, new_model_state))``;
        ``state`` gives the model state, statistics and step; ``batch`` is what
        :attr:`prepare_batch` returned, sharded over the mesh.
      optimizer: ``steps_per_epoch -> optax transform`` (schedules need the epoch length; the
        engine knows it, the config does not).
      trainable: path prefixes of the parameters this stage trains (``None``: all). The others
        stay bit-identical and get no optimizer state.
      prepare_batch: host-side NumPy ``(batch, np_rng) -> batch`` (augmentation of every
        spatial modality alike, anomaly synthesis).
      batch_size: this stage's global batch (``None``: ``config.train.batch_size``).
      refresh_statistics_every: refit the method's statistics every this many epochs of the
        stage (0: only after the last stage).
      learning_rate: optionally ``steps_per_epoch -> schedule`` of the optimizer's count; the
        engine logs it on the host as ``train/<name>/lr`` (the compiled step is untouched).
      param_ema: decay of an exponential moving average of the trained parameters (0: off),
        kept in ``model_state["param_ema"]`` from the stage's start; :func:`eval_params` gives
        it to scoring and statistics (Polyak averaging of the last ~1/(1-decay) iterates).
      derive: optionally a pure global ``(state, batch) -> {name: [B, ...]}`` of parts that
        this stage keeps frozen (NF-BMR's flow outputs in its mapping stage). The engine runs
        it once over the training split when the stage starts (or resumes), keeps the result
        on the host beside the extractor features, and every batch of the stage carries it as
        ``batch["derived"][name]``: a frozen network is not run again every step. It sees the
        split's samples unaugmented, so it suits stages that do not augment them.
    """

    name: str
    epochs: int
    loss_fn: LossFn
    optimizer: Callable[[int], optax.GradientTransformation]
    trainable: tuple[str, ...] | None = None
    prepare_batch: Callable[[dict, np.random.Generator], dict] = host_identity
    batch_size: int | None = None
    refresh_statistics_every: int = 0
    learning_rate: Callable[[int], optax.Schedule] | None = None
    param_ema: float = 0.0
    derive: Callable[[State, Batch], dict] | None = None

    def tx(self, params: PyTree, steps_per_epoch: int) -> optax.GradientTransformation:
        """The optimizer restricted to the trainable parameters."""
        tx = self.optimizer(steps_per_epoch)
        return tx if self.trainable is None else optax.masked(tx, trainable_mask(params, self.trainable))

    def init_opt(self, state: State, steps_per_epoch: int) -> State:
        """A fresh optimizer state for this stage (and, with ``param_ema``, the average started at
        the current parameters)."""
        state = state.replace(opt_state=self.tx(state.params, steps_per_epoch).init(state.params))
        if self.param_ema:
            if not 0.0 < self.param_ema < 1.0:
                raise ConfigError(f"param_ema (config key train.param_ema) must be in (0, 1), got {self.param_ema}")
            start = jax.tree_util.tree_map(lambda p: jnp.array(p, copy=True), state.params)  # own buffers (donation)
            state = state.replace(model_state={**state.model_state, PARAM_EMA: start})
        return state

    def train_step(self, steps_per_epoch: int) -> Callable[[State, Batch, jax.Array], tuple[State, dict]]:
        """The pure global step of this stage: :func:`gradient_step` with its loss and optimizer."""

        def step(state: State, batch: Batch, rng: jax.Array):
            return gradient_step(self, self.tx(state.params, steps_per_epoch), state, batch, rng)

        return step


PARAM_EMA = "param_ema"


def eval_params(state: State) -> PyTree:
    """The parameters to score and fit statistics with: their moving average when a stage keeps one
    (``Stage.param_ema``), else the parameters themselves."""
    ms = state.model_state
    return ms[PARAM_EMA] if isinstance(ms, Mapping) and PARAM_EMA in ms else state.params


def gradient_step(stage: Stage, tx: optax.GradientTransformation, state: State, batch: Batch, rng: jax.Array):
    """One step of any stage: ``(state, metrics)`` after one optimizer update.

    Gradients of frozen parameters are replaced by zeros (XLA then never computes them) and
    the frozen leaves of the result are the input leaves themselves, so they stay
    bit-identical (adding a zero update would turn -0.0 into +0.0).
    """
    mask = trainable_mask(state.params, stage.trainable)

    def loss(params):
        return stage.loss_fn(params, state, batch, rng)

    (value, (metrics, new_ms)), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    grads = jax.tree_util.tree_map(lambda m, g: g if m else jnp.zeros_like(g), mask, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = optax.apply_updates(state.params, updates)
    params = jax.tree_util.tree_map(lambda m, n, p: n if m else p, mask, new, state.params)
    metrics = {"loss": value, **metrics, "grad_norm": optax.global_norm(grads)}
    if stage.param_ema:
        d = stage.param_ema
        ema = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, state.model_state[PARAM_EMA], params)
        new_ms = {**new_ms, PARAM_EMA: ema}
    new_state = state.replace(step=state.step + 1, params=params, model_state=new_ms, opt_state=opt_state)
    return new_state, metrics


AUGMENT_MODES = ("auto", "none", "flip_rot90")


def resolve_augment(mode: str, category: str) -> str:
    """``data.augment`` for one category: ``auto`` is flips + rot90 for textures, none otherwise."""
    from jaxflow_ad import data as data_lib

    if mode not in AUGMENT_MODES:
        raise ConfigError(f"config key data.augment={mode!r}: use one of {AUGMENT_MODES}")
    if mode == "auto":
        return "flip_rot90" if data_lib.is_texture(category) else "none"
    return mode


class Method:
    """Defaults for every method: no extractor, no statistics, no artifacts, no notes.

    Subclasses set :attr:`name` and :attr:`stages` and implement :meth:`init` and
    :meth:`score`; those with fitted statistics set :attr:`has_statistics` and implement
    :meth:`statistics_batch` and :meth:`fit_statistics`.
    """

    name: str = ""
    has_statistics: bool = False
    # True: the engine runs :meth:`init` as one jitted program (through its compilation caches) instead
    # of eagerly, op by op. Set by a method whose jitted init is tested to give bitwise the eager values
    # (XLA may fuse an init's arithmetic differently: the toy's moves by 1 ulp)
    jit_init: bool = False

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.stages: tuple[Stage, ...] = ()
        self.extractor = None  # a jaxflow_ad.backbones.FrozenExtractor, or None
        self.notes: list[str] = []

    @classmethod
    def configure(cls, config: ml_collections.ConfigDict, category: str) -> ml_collections.ConfigDict:
        """Per-category settings on a copy of the config (default: resolve ``data.augment``)."""
        config.data.augment = resolve_augment(str(config.data.get("augment", "none")), category)
        return config

    def augment(self, batch: dict, rng: np.random.Generator) -> dict:
        """``data.augment`` on the host: flips and rot90 of every spatial modality alike."""
        if self.config.data.get("augment", "none") == "flip_rot90":
            from jaxflow_ad.data import flip_rot90_samples

            return flip_rot90_samples(batch, rng)
        return dict(batch)

    def init(self, rng: jax.Array, example_batch: Batch) -> State:
        raise NotImplementedError

    def statistics_batch(self, state: State, batch: Batch) -> PyTree:
        """Per-sample device outputs (leading axis B) that :meth:`fit_statistics` reduces."""
        raise NotImplementedError(f"{type(self).__name__} has no statistics")

    def fit_statistics(self, state: State, outputs: Iterable[PyTree]) -> PyTree:
        """Host-side reduction of the :meth:`statistics_batch` outputs (padding rows removed) to
        ``state.stats``. Gets an iterator, so a memory bank can be built in bounded memory."""
        raise NotImplementedError(f"{type(self).__name__} has no statistics")

    def score(self, state: State, batch: Batch, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(pixel maps [B, h, w], image scores [B])``; deterministic for a given ``rng``."""
        raise NotImplementedError

    def artifacts(self, state: State) -> dict[str, np.ndarray]:
        del state
        return {}

    def statistics_from(self, state: State, batches: Iterable[Batch]) -> State:
        """``state`` with statistics fitted on one device from host batches: the engine's fit
        without a mesh, for notebooks and tests."""
        fn = jax.jit(self.statistics_batch)
        outputs = (jax.tree_util.tree_map(np.asarray, fn(state, b)) for b in batches)
        return state.replace(stats=self.fit_statistics(state, outputs))
