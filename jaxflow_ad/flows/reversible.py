"""Running a chain of invertible layers, with optional memory-saving backprop.

A *layer* is a flax module with ``forward(x, train) -> (y, logdet)`` and
``inverse(y, train) -> (x, logdet)``; ``x`` may be any pytree (a tuple of
pyramid levels, say). A chain is a sequence of layers with one variable dict
per layer (``{"params": ..., "constants": ..., "volume_norm": ...}``).

:func:`chain_forward` runs the chain. With ``reversible=True`` its gradient
comes from a ``jax.custom_vjp`` that keeps only the chain's output: the
backward pass walks the layers in reverse, rebuilds each layer's input from
its output with ``inverse`` and differentiates one layer at a time, so the
memory of the backward pass does not grow with depth (official PyramidFlow
"autoFlow", paper Sec. 4.1). Compute is about forward + inverse + forward +
backward. Running statistics (volume norm) are written by the forward pass
only, once per step; the backward pass re-runs layers with every collection
immutable.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = Any
STAT_COLLECTIONS = ("volume_norm", "batch_stats")


def _apply(layer: nn.Module, variables: dict, x, train: bool, method: str, mutable: bool):
    fn = getattr(layer, method)
    if mutable:
        cols = [c for c in STAT_COLLECTIONS if c in variables]
        (y, ld), upd = layer.apply(variables, x, train=train, method=fn, mutable=cols)
        return y, ld, {**variables, **upd}
    y, ld = layer.apply(variables, x, train=train, method=fn)
    return y, ld, variables


def _batch_size(x) -> int:
    return jax.tree_util.tree_leaves(x)[0].shape[0]


def _plain_chain(layers, variables, x, train, update_stats):
    logdet = jnp.zeros((_batch_size(x),), jax.tree_util.tree_leaves(x)[0].dtype)
    new_vars = []
    for layer, v in zip(layers, variables):
        x, ld, v = _apply(layer, v, x, train, "forward", mutable=update_stats)
        logdet = logdet + ld
        new_vars.append(v)
    return x, logdet, new_vars


def _split_params(variables):
    params = [v["params"] for v in variables]
    rest = [{k: c for k, c in v.items() if k != "params"} for v in variables]
    return params, rest


def _reversible_chain(layers: Sequence[nn.Module], train: bool, update_stats: bool):
    """A custom-vjp function ``(params, rest, x) -> (y, logdet, new_rest)``."""

    def run(params, rest, x):
        variables = [{"params": p, **r} for p, r in zip(params, rest)]
        y, ld, new_vars = _plain_chain(layers, variables, x, train, update_stats)
        return y, ld, [{k: c for k, c in v.items() if k != "params"} for v in new_vars]

    @jax.custom_vjp
    def chain(params, rest, x):
        return run(params, rest, x)

    def fwd(params, rest, x):
        y, ld, new_rest = run(params, rest, x)
        return (y, ld, new_rest), (params, rest, y)

    def bwd(res, cts):
        params, rest, y = res
        g_y, g_ld, _ = cts
        g_params = [None] * len(layers)
        for i in reversed(range(len(layers))):
            variables = {"params": params[i], **rest[i]}
            x_i, _, _ = _apply(layers[i], variables, y, train, "inverse", mutable=False)
            x_i = jax.lax.stop_gradient(x_i)

            def layer_fn(p, x, i=i):
                out, ld, _ = _apply(layers[i], {"params": p, **rest[i]}, x, train, "forward", mutable=False)
                return out, ld

            _, vjp = jax.vjp(layer_fn, params[i], x_i)
            g_params[i], g_y = vjp((g_y, g_ld))
            y = x_i
        g_rest = jax.tree_util.tree_map(jnp.zeros_like, rest)
        return g_params, g_rest, g_y

    chain.defvjp(fwd, bwd)
    return chain


def chain_forward(layers: Sequence[nn.Module], variables: Sequence[dict], x: PyTree, *,
                  train: bool = False, reversible: bool = False):
    """Run ``layers`` forward. Returns ``(y, logdet [B], new_variables)``.

    In training mode the volume-norm running means in the returned variables
    are updated once; in evaluation mode the variables come back unchanged.
    ``reversible`` selects the memory-saving gradient (same values).
    """
    variables = list(variables)
    if not reversible:
        return _plain_chain(layers, variables, x, train, update_stats=train)
    params, rest = _split_params(variables)
    y, ld, new_rest = _reversible_chain(tuple(layers), train, train)(params, rest, x)
    return y, ld, [{"params": p, **r} for p, r in zip(params, new_rest)]


def chain_inverse(layers: Sequence[nn.Module], variables: Sequence[dict], y: PyTree, *, train: bool = False):
    """Invert the chain: ``(x, logdet [B])`` with ``logdet = -forward logdet``."""
    logdet = jnp.zeros((_batch_size(y),), jax.tree_util.tree_leaves(y)[0].dtype)
    for layer, v in reversed(list(zip(layers, variables))):
        y, ld, _ = _apply(layer, v, y, train, "inverse", mutable=False)
        logdet = logdet + ld
    return y, logdet
