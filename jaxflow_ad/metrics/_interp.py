"""Resampling kernels for evaluation: bilinear for anomaly maps, nearest for masks.

Both use the half-pixel-centre convention: output pixel `o` of an axis resized from `I` to
`O` samples the input at coordinate `(o + 0.5) * I / O - 0.5`, where input pixel `i` has its
centre at `i`. Samples outside the first/last pixel centre take the edge value.
For upsampling this is the convention of `torch.nn.functional.interpolate(...,
mode="bilinear", align_corners=False)`, `jax.image.resize(..., "bilinear")`, PIL's
`BILINEAR` and `scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest")`.
Downsampling is plain point sampling of the same formula, without anti-aliasing (like
torch's default, unlike PIL and jax.image.resize).
"""

from __future__ import annotations

import numpy as np


def _linear_weights(in_size: int, out_size: int) -> np.ndarray:
    """Interpolation matrix W [out_size, in_size] with out = W @ in along one axis."""
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    src = np.clip(src, 0.0, in_size - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = src - i0
    w = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(w, (rows, i0), 1.0 - frac)
    np.add.at(w, (rows, i1), frac)
    return w


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output pixel: the input pixel whose area holds its centre."""
    idx = np.floor((np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size))
    return np.minimum(idx.astype(np.int64), in_size - 1)


def bilinear_resize(a: np.ndarray, shape) -> np.ndarray:
    """Bilinear resize of a 2-D array to `shape` (separable, computed in float64).

    Returns float32 for float32/float16/small-integer input, float64 for float64 input.
    """
    a = np.asarray(a)
    out_h, out_w = int(shape[0]), int(shape[1])
    dtype = np.result_type(np.float32, a.dtype)
    if a.shape == (out_h, out_w):
        return a.astype(dtype, copy=False)
    wy = _linear_weights(a.shape[0], out_h)
    wx = _linear_weights(a.shape[1], out_w)
    out = wy @ a.astype(np.float64, copy=False) @ wx.T
    return out.astype(dtype, copy=False)


def nearest_resize(a: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array to `shape` (half-pixel centres, no blending)."""
    a = np.asarray(a)
    out_h, out_w = int(shape[0]), int(shape[1])
    if a.shape == (out_h, out_w):
        return a
    iy = _nearest_index(a.shape[0], out_h)
    ix = _nearest_index(a.shape[1], out_w)
    return a[np.ix_(iy, ix)]
