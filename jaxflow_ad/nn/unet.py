"""A vanilla UNet with additive skips and BatchNorm (FAIR's restoration network).

Architecture (FAIR paper Sec. 4.3, "vanilla UNet with skip connections, base
channel c = 128"; layer facts from the official ``model_unetskip.py``):

* Encoder: 5 blocks of ``[conv3x3 - BN - ReLU] x 2`` with widths
  ``c * (1, 2, 4, 8, 8)`` and a 2x2 max-pool between blocks (a 16x16
  bottleneck at 256x256 input).
* Decoder, 4 stages from the bottom up: bilinear x2 upsampling with
  ``align_corners=True``, ``conv-BN-ReLU`` to the skip's width, **additive**
  skip (``up + skip``, not concatenation), then ``[conv-BN-ReLU] x 2`` where the
  second conv goes to the next shallower width (``8c -> 4c -> 2c -> c``, and
  stays at ``c`` in the last stage).
* Output: a final 3x3 conv to ``out_channels`` with no activation.
* About 69.0M parameters at ``c = 128`` with one input channel (65.8 "M" in
  2^20 units, the unit of the paper's Table 5 and errata); the paper also
  reports ``c = 64`` and ``c = 32``.

Initialisation as the official ``weights_init``: conv kernels ``N(0, 0.02)``,
conv biases PyTorch's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, BN scale
``N(1, 0.02)`` and bias 0. BatchNorm uses PyTorch's defaults (momentum 0.1,
i.e. flax ``momentum=0.9``; ``epsilon=1e-5``); its running statistics live in
the ``batch_stats`` collection: call with ``train=True, mutable=["batch_stats"]``
to update them.

Input height and width must be divisible by ``2 ** (len(multipliers) - 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _normal(mean: float, std: float):
    def init(key, shape, dtype=jnp.float32):
        return mean + std * jax.random.normal(key, shape, dtype)

    return init


def _uniform_bias(fan_in: int):
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` linear interpolation weights with ``align_corners=True``."""
    m = np.zeros((n_out, n_in), np.float32)
    if n_in == 1 or n_out == 1:
        m[:, 0] = 1.0
        return m
    src = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    i0 = np.clip(np.floor(src).astype(int), 0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (src - i0).astype(np.float32)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


def upsample_bilinear_align_corners(x: jax.Array, factor: int = 2) -> jax.Array:
    """Bilinear upsampling of NHWC ``x`` by ``factor`` with corner pixels aligned
    (PyTorch ``Upsample(mode="bilinear", align_corners=True)``)."""
    _, h, w, _ = x.shape
    mh = jnp.asarray(_align_corners_matrix(h, h * factor), x.dtype)
    mw = jnp.asarray(_align_corners_matrix(w, w * factor), x.dtype)
    x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("pw,bowc->bopc", mw, x, precision=jax.lax.Precision.HIGHEST)


class ConvBNReLU(nn.Module):
    """3x3 conv (padding 1) - BatchNorm - ReLU."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        fan_in = 9 * x.shape[-1]
        x = nn.Conv(self.features, (3, 3), padding=1, kernel_init=_normal(0.0, 0.02), bias_init=_uniform_bias(fan_in))(
            x
        )
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, scale_init=_normal(1.0, 0.02))(x)
        return nn.relu(x)


class UNet(nn.Module):
    """FAIR's restoration UNet: ``[B, H, W, C_in] -> [B, H, W, out_channels]``.

    Attributes:
      base_width: ``c`` (128 in the paper; 64 and 32 are its lighter variants).
      out_channels: 3 (the colour image is restored).
      multipliers: encoder widths in units of ``c``; the official network is
        ``(1, 2, 4, 8, 8)``.
    """

    base_width: int = 128
    out_channels: int = 3
    multipliers: Sequence[int] = (1, 2, 4, 8, 8)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        levels = len(self.multipliers)
        div = 2 ** (levels - 1)
        if x.ndim != 4 or x.shape[1] % div or x.shape[2] % div:
            raise ValueError(f"UNet expects NHWC input with height and width divisible by {div}, got shape {x.shape}")
        widths = [self.base_width * m for m in self.multipliers]
        skips = []
        for level, width in enumerate(widths):
            if level > 0:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = ConvBNReLU(width, name=f"enc{level}_a")(x, train)
            x = ConvBNReLU(width, name=f"enc{level}_b")(x, train)
            skips.append(x)
        for level in range(levels - 2, -1, -1):
            x = upsample_bilinear_align_corners(x, 2)
            x = ConvBNReLU(widths[level], name=f"up{level}")(x, train)
            x = x + skips[level]
            x = ConvBNReLU(widths[level], name=f"dec{level}_a")(x, train)
            x = ConvBNReLU(widths[max(level - 1, 0)], name=f"dec{level}_b")(x, train)
        fan_in = 9 * x.shape[-1]
        return nn.Conv(
            self.out_channels,
            (3, 3),
            padding=1,
            kernel_init=_normal(0.0, 0.02),
            bias_init=_uniform_bias(fan_in),
            name="out",
        )(x)
