"""Sobel image gradients, in the spatial and the frequency domain (FAIR Sec. 5.4).

FAIR's spatial-domain variant feeds the UNet the horizontal and vertical Sobel
derivatives of the grayscale image (``FAIR_xy3``, paper Table 9) or only the
horizontal one (``FAIR_x3``, Table 10). The official code computes them with
``cv2.Sobel(gray, CV_64F, 1, 0, ksize=3)`` (and ``0, 1``): unnormalised
kernels, border ``BORDER_REFLECT_101``; the "only x" variant stacks
``[gx, gx]`` so the input keeps two channels.

Conventions here: images are ``[..., H, W]``; ``x`` is the column (width) axis,
``y`` the row axis; filtering is cross-correlation, so for ``ksize=3``

    gx(y, x) = sum_{i,j in {-1,0,1}} s[i] d[j] f(y + i, x + j),
    d = (-1, 0, 1),  s = (1, 2, 1),

i.e. ``gx = [1, 2, 1]^T (f(x+1) - f(x-1))`` (paper Eq. 12 plus the Sobel
smoothing). Larger odd ``ksize`` use OpenCV's construction: the derivative
taps are ``(-1, 0, 1)`` convolved with the binomial of length ``ksize - 2`` and
the smoothing taps are the binomial of length ``ksize``.

Frequency form (paper Eq. 13-16): by linearity and the shift theorem
``F[f(x - x0)] = F[f] exp(-j 2 pi x0 u / M)``, a correlation with taps ``w_k``
at offsets ``k`` multiplies the DFT by ``sum_k w_k exp(+j 2 pi k u / M)``. For
the central difference this is ``exp(j 2 pi u/M) - exp(-j 2 pi u/M) =
2 j sin(2 pi u / M)`` (Eq. 16), which vanishes on ``u = 0``: the directional
loss of frequency information the paper discusses. The frequency form equals
the spatial filter with *circular* padding exactly; with reflect or zero
padding the two agree away from the one-pixel (``ksize // 2``) border.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Padding = Literal["reflect101", "circular", "zero", "edge"]

_PAD_MODES = {"reflect101": "reflect", "circular": "wrap", "zero": "constant", "edge": "edge"}


def _binomial(n: int) -> np.ndarray:
    row = np.array([1.0])
    for _ in range(n - 1):
        row = np.convolve(row, [1.0, 1.0])
    return row


def sobel_taps(ksize: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(derivative, smoothing)`` 1-D taps of an OpenCV-style Sobel kernel of odd size ``ksize``."""
    if ksize < 3 or ksize % 2 == 0:
        raise ValueError(f"Sobel ksize must be odd and >= 3, got {ksize}")
    deriv = np.convolve([-1.0, 0.0, 1.0], _binomial(ksize - 2)) if ksize > 3 else np.array([-1.0, 0.0, 1.0])
    return deriv, _binomial(ksize)


def sobel_kernel(direction: Literal["x", "y"] = "x", ksize: int = 3) -> np.ndarray:
    """The 2-D correlation kernel ``[ksize, ksize]`` (rows = y, columns = x)."""
    deriv, smooth = sobel_taps(ksize)
    if direction == "x":
        return np.outer(smooth, deriv)
    if direction == "y":
        return np.outer(deriv, smooth)
    raise ValueError(f"direction must be 'x' or 'y', got {direction!r}")


def _correlate_1d(x: jax.Array, taps: np.ndarray, axis: int, padding: Padding) -> jax.Array:
    r = len(taps) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    if padding not in _PAD_MODES:
        raise ValueError(f"padding must be one of {sorted(_PAD_MODES)}, got {padding!r}")
    xp = jnp.pad(x, pad, mode=_PAD_MODES[padding])
    n = x.shape[axis]
    out = jnp.zeros_like(x)
    for k, w in enumerate(taps):
        if w != 0.0:
            out = out + float(w) * jax.lax.slice_in_dim(xp, k, k + n, axis=axis)
    return out


def sobel(
    images: jax.Array, direction: Literal["x", "y"] = "x", ksize: int = 3, padding: Padding = "reflect101"
) -> jax.Array:
    """Spatial Sobel derivative of ``images[..., H, W]`` (separable, float32).

    ``padding="reflect101"`` is OpenCV's default border (``cv2.Sobel`` in the
    official code); ``"circular"`` makes the result equal :func:`sobel_fft`.
    """
    deriv, smooth = sobel_taps(ksize)
    x = images.astype(jnp.float32)
    if direction == "x":
        return _correlate_1d(_correlate_1d(x, deriv, -1, padding), smooth, -2, padding)
    if direction == "y":
        return _correlate_1d(_correlate_1d(x, deriv, -2, padding), smooth, -1, padding)
    raise ValueError(f"direction must be 'x' or 'y', got {direction!r}")


def _taps_response(taps: np.ndarray, n: int) -> jax.Array:
    """``sum_k w_k exp(+j 2 pi k u / n)`` for ``u = 0..n-1`` (uncentred DFT bins), offsets ``k`` centred."""
    r = len(taps) // 2
    u = jnp.arange(n, dtype=jnp.float32)
    resp = jnp.zeros((n,), jnp.complex64)
    for k, w in enumerate(taps):
        if w != 0.0:
            resp = resp + float(w) * jnp.exp(1j * 2.0 * jnp.pi * (k - r) * u / n)
    return resp


def sobel_transfer(shape: tuple[int, int], direction: Literal["x", "y"] = "x", ksize: int = 3) -> jax.Array:
    """Complex DFT-domain response ``[H, W]`` (uncentred bins) of the Sobel operator.

    For ``ksize=3`` and ``direction="x"`` it is
    ``2 j sin(2 pi v / W) * (2 + 2 cos(2 pi u / H))`` with ``v`` the column
    frequency: paper Eq. 16 times the response of the ``[1, 2, 1]`` smoothing.
    """
    h, w = int(shape[0]), int(shape[1])
    deriv, smooth = sobel_taps(ksize)
    if direction == "x":
        return _taps_response(smooth, h)[:, None] * _taps_response(deriv, w)[None, :]
    if direction == "y":
        return _taps_response(deriv, h)[:, None] * _taps_response(smooth, w)[None, :]
    raise ValueError(f"direction must be 'x' or 'y', got {direction!r}")


def central_difference_transfer(n: int) -> jax.Array:
    """Paper Eq. 16 along one axis: ``exp(j 2 pi u/n) - exp(-j 2 pi u/n) = 2 j sin(2 pi u / n)``."""
    u = jnp.arange(n, dtype=jnp.float32)
    return (2j * jnp.sin(2.0 * jnp.pi * u / n)).astype(jnp.complex64)


def sobel_fft(images: jax.Array, direction: Literal["x", "y"] = "x", ksize: int = 3) -> jax.Array:
    """Sobel derivative of ``images[..., H, W]`` computed in the frequency domain (circular boundary)."""
    h, w = images.shape[-2], images.shape[-1]
    spectrum = jnp.fft.fft2(images.astype(jnp.float32), axes=(-2, -1))
    out = jnp.fft.ifft2(spectrum * sobel_transfer((h, w), direction, ksize), axes=(-2, -1))
    return jnp.real(out).astype(jnp.float32)


def sobel_features(gray: jax.Array, only_x: bool = False, ksize: int = 3, padding: Padding = "reflect101") -> jax.Array:
    """FAIR's gradient input: ``[B, H, W] -> [B, H, W, 2]`` stacking ``[gx, gy]``.

    ``only_x=True`` gives the official "onlyx" variant ``[gx, gx]`` (paper's
    ``FAIR_x3``), which keeps two channels so the network is unchanged.
    """
    gx = sobel(gray, "x", ksize, padding)
    gy = gx if only_x else sobel(gray, "y", ksize, padding)
    return jnp.stack([gx, gy], axis=-1)
