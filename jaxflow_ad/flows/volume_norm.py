"""Volume normalization (PyramidFlow, Sec. 3.2 and Fig. 4).

The log-scales ``s`` of a coupling (and the log-diagonal of the PLU 1x1
convolution) are made zero-mean so that the flow preserves volume on average.
Statistics are taken over

* ``"CVN"`` (channel volume normalization): batch and channels, one mean per
  pixel. Official code: ``dims=(0, 1)`` on NCHW, i.e. axes ``(0, 3)`` on NHWC;
  the running mean has shape ``(1, H, W, 1)``.
* ``"SVN"`` (spatial volume normalization): batch, height and width, one mean
  per channel. Official ``dims=(0, 2, 3)``; running mean ``(1, 1, 1, C)``.
* ``"none"``: no normalization (the paper's ablation "I").

Training uses the batch mean; evaluation uses a running mean updated with
momentum 0.1 (official ``VolumeNorm``). The official code updates the running
mean inside the forward pass, so its memory-saving backprop (which runs the
forward three times per step) updates it three times. Here the update happens
exactly once per training step: only a forward applied with the
``"volume_norm"`` collection mutable writes it, and the reversible backward
pass never does. The running mean is a non-differentiated state, so none of
the official code's autograd-history leak can happen.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

MODES = ("CVN", "SVN", "none")
COLLECTION = "volume_norm"


def reduce_axes(mode: str) -> tuple[int, ...]:
    """NHWC axes over which the mean is taken for ``mode``."""
    if mode == "CVN":
        return (0, 3)
    if mode == "SVN":
        return (0, 1, 2)
    raise ValueError(f"unknown volume normalization {mode!r}; use one of {MODES} (config key model.volume_norm)")


def stat_shape(mode: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the running mean for an NHWC input of ``shape``."""
    axes = reduce_axes(mode)
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def batch_mean(s: jax.Array, mode: str) -> jax.Array:
    return jnp.mean(s, axis=reduce_axes(mode), keepdims=True)


class VolumeNorm(nn.Module):
    """Subtract the batch mean (training) or the running mean (evaluation).

    Attributes:
      mode: ``"CVN"``, ``"SVN"`` or ``"none"``.
      momentum: running-mean momentum (0.1 in the paper, Sec. 4.2).
    """

    mode: str = "CVN"
    momentum: float = 0.1

    @nn.compact
    def __call__(self, s: jax.Array, train: bool, update_stats: bool = True) -> jax.Array:
        if self.mode == "none":
            return s
        rm = self.variable(COLLECTION, "running_mean", jnp.zeros, stat_shape(self.mode, s.shape), s.dtype)
        if not train:
            return s - rm.value
        mean = batch_mean(s, self.mode)
        if update_stats and self.is_mutable_collection(COLLECTION) and not self.is_initializing():
            rm.value = (1.0 - self.momentum) * rm.value + self.momentum * jax.lax.stop_gradient(mean)
        return s - mean
