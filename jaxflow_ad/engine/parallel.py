"""Device mesh and data parallelism.

One 1-D mesh over every device of every process, axis ``"batch"``. Train
steps are pure *global* functions; they are jitted with the state replicated
(``P()``) and the batch split along its first axis (``P("batch")``), so XLA
partitions the computation and inserts the collectives: a pairwise loss whose
pairs straddle devices and batch statistics (volume norm, BatchNorm) come out
exactly as on one device, and the gradients are all-reduced.

Each process feeds only its own slice of the global batch
(:func:`global_batch`): on several hosts nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxflow_ad.errors import ConfigError

AXIS = "batch"


def make_mesh(devices=None) -> Mesh:
    """1-D mesh over ``devices`` (default: all devices of all processes).

    Auto axes: XLA partitions the global step (GSPMD); explicit-sharding types are not needed.
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def check_batch_size(batch_size: int, key: str, mesh: Mesh | None = None) -> None:
    n = mesh.size if mesh is not None else jax.device_count()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{key}={batch_size!r}: a batch size must be a positive integer, e.g. --config.{key}={n}")
    if batch_size % n:
        raise ConfigError(
            f"{key}={batch_size} must be a multiple of the number of devices ({n}); "
            f"set --config.{key}={max(n, batch_size // n * n)}"
        )


def process_slice(global_batch: int) -> slice:
    """The rows of a global batch that this process feeds."""
    per = global_batch // jax.process_count()
    i = jax.process_index()
    return slice(i * per, (i + 1) * per)


def global_batch(mesh: Mesh, batch: Any) -> Any:
    """Host arrays holding the *global* batch (a pytree, e.g. ``{"image": ..., "features": {tap: ...}}``)
    -> global arrays sharded on ``"batch"``.

    Every process passes the same global batch (it is cheap to index on the
    host) and contributes only its own rows.
    """
    sh = batch_sharded(mesh)

    def put(v):
        v = np.asarray(v)
        return jax.make_array_from_process_local_data(sh, v[process_slice(v.shape[0])], v.shape)

    return jax.tree_util.tree_map(put, batch)


def pad_rows(tree: Any, size: int) -> Any:
    """Every array of ``tree`` padded to ``size`` rows by repeating its last row (a short last batch)."""

    def pad(v):
        v = np.asarray(v)
        n = v.shape[0]
        return v if n == size else np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)])

    return jax.tree_util.tree_map(pad, tree)


def to_replicated(mesh: Mesh, tree: Any) -> Any:
    return jax.device_put(tree, replicated(mesh))


def jit_train_step(mesh: Mesh, step: Callable) -> Callable:
    """``(state, batch, rng) -> (state, metrics)`` jitted over the mesh; the old state is donated."""
    rep, data = replicated(mesh), batch_sharded(mesh)
    return jax.jit(step, in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=0)


def jit_score(mesh: Mesh, fn: Callable, num_args: int = 2) -> Callable:
    """``fn(replicated, batch, *replicated)`` jitted with its second argument sharded over the
    mesh: ``score(state, batch, rng)``, ``statistics_batch(state, batch)``, an extractor's
    ``apply(variables, x)``. Outputs are replicated so that every process can read them."""
    rep, data = replicated(mesh), batch_sharded(mesh)
    shardings = tuple(data if i == 1 else rep for i in range(num_args))
    return jax.jit(fn, in_shardings=shardings, out_shardings=rep)
