"""Invertible pyramid (PyramidFlow, Lei et al. CVPR 2023, Sec. 3.1, Eq. 1-2).

Decomposition (Eq. 1)::

    x_d = D^d(x) - U(D^{d+1}(x))      for d < L-1,      x_{L-1} = D^{L-1}(x)

Composition (Eq. 2), computed recursively from the coarsest level::

    r = x_{L-1};   r = U(r) + x_d   for d = L-2 ... 0

Composition inverts decomposition *exactly* whatever the operators ``D`` and
``U`` are, because every level stores the residual against the same ``U`` that
composition re-applies. The pyramid is over-complete (more numbers out than
in), so it has no Jacobian determinant; PyramidFlow never uses one.

Default operators follow the official code (gasharper/PyramidFlow, class
``LaplacianMaxPyramid``):

* blur: 5x5 binomial kernel ``[1,4,6,4,1]^T [1,4,6,4,1] / 256`` with zero
  padding of 2, depthwise. It is separable; we apply it as two 1-D passes of
  shifted adds (same function, different float rounding order: ~1e-7).
* ``down="max"``: blur, then 2x2 max pooling ("max pooling instead of
  subsampling").
* ``up="nearest"``: nearest-neighbour x2 (PyTorch legacy ``nearest``, i.e.
  pixel repetition; *not* ``jax.image.resize``, whose half-pixel centres would
  pick other pixels), then blur, with no x4 gain.

The paper allows any linear pair (Sec. 3.1); ``down`` also accepts
``"subsample"`` (blur then keep even pixels, the classic Laplacian pyramid) and
``"avg"`` (blur then 2x2 mean), and ``up`` accepts ``"zeros"`` (zero insertion
with gain 4, the classic Burt-Adelson expand). All arrays are NHWC.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

_BINOMIAL_5 = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)
DOWN_OPS = ("max", "subsample", "avg")
UP_OPS = ("nearest", "zeros")


def _blur_axis(x: Array, axis: int) -> Array:
    """Zero-padded 1-D binomial filter [1,4,6,4,1]/16 along ``axis``."""
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (2, 2)
    xp = jnp.pad(x, pad)
    out = None
    for k, w in enumerate(_BINOMIAL_5):
        term = w * jax.lax.slice_in_dim(xp, k, k + n, axis=axis)
        out = term if out is None else out + term
    return out


def binomial_blur(x: Array) -> Array:
    """5x5 binomial blur of NHWC ``x`` with zero padding (the official kernel /256)."""
    return _blur_axis(_blur_axis(x, 1), 2)


def nearest_up2(x: Array) -> Array:
    """x2 nearest-neighbour upsampling of NHWC ``x`` by pixel repetition."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def nearest_down2(x: Array) -> Array:
    """x1/2 nearest-neighbour resampling as PyTorch's legacy ``nearest``: pixel (2i, 2j)."""
    return x[:, ::2, ::2, :]


def resize_nearest(x: Array, size: tuple[int, int]) -> Array:
    """Nearest resampling between pyramid levels (factors that are powers of two)."""
    h, w = x.shape[1:3]
    th, tw = size
    while h < th:
        x, h, w = nearest_up2(x), h * 2, w * 2
    while h > th:
        x, h, w = nearest_down2(x), h // 2, w // 2
    if (h, w) != (th, tw):
        raise ValueError(f"cannot resample {x.shape[1:3]} to {size}: sizes must differ by powers of two")
    return x


def _max_pool2(x: Array) -> Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _avg_pool2(x: Array) -> Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def pyramid_down(x: Array, op: str = "max") -> Array:
    """One level down: blur, then halve the resolution with ``op``."""
    y = binomial_blur(x)
    if op == "max":
        return _max_pool2(y)
    if op == "avg":
        return _avg_pool2(y)
    if op == "subsample":
        return y[:, ::2, ::2, :]
    raise ValueError(f"unknown pyramid down operator {op!r}; choose one of {DOWN_OPS}")


def pyramid_up(x: Array, op: str = "nearest") -> Array:
    """One level up: double the resolution with ``op``, then blur."""
    if op == "nearest":
        y = nearest_up2(x)
    elif op == "zeros":
        b, h, w, c = x.shape
        y = jnp.zeros((b, h, 2, w, 2, c), x.dtype).at[:, :, 0, :, 0, :].set(4.0 * x)
        y = y.reshape(b, 2 * h, 2 * w, c)
    else:
        raise ValueError(f"unknown pyramid up operator {op!r}; choose one of {UP_OPS}")
    return binomial_blur(y)


def check_divisible(shape: Sequence[int], levels: int) -> None:
    """Raise a clear error when H or W cannot be halved ``levels - 1`` times."""
    h, w = shape[1], shape[2]
    f = 2 ** (levels - 1)
    if levels < 1 or h % f or w % f:
        raise ValueError(
            f"input {h}x{w} cannot make a {levels}-level pyramid: height and width must be "
            f"multiples of 2**(levels-1) = {f}; change data.image_size or model.levels"
        )


def decompose(x: Array, levels: int, down: str = "max", up: str = "nearest") -> tuple[Array, ...]:
    """Pyramid decomposition (Eq. 1): NHWC ``x`` -> ``levels`` arrays, finest first."""
    check_divisible(x.shape, levels)
    gauss = [x]
    for _ in range(levels - 1):
        gauss.append(pyramid_down(gauss[-1], down))
    out = [g - pyramid_up(gn, up) for g, gn in zip(gauss[:-1], gauss[1:])]
    out.append(gauss[-1])
    return tuple(out)


def compose(pyramid: Sequence[Array], up: str = "nearest") -> Array:
    """Pyramid composition (Eq. 2), the exact inverse of :func:`decompose`."""
    r = pyramid[-1]
    for level in reversed(pyramid[:-1]):
        r = pyramid_up(r, up) + level
    return r
