"""Image resizing as each method's official loader does it (``config.data.resize``).

The resampling filter changes what a frequency-domain method sees: on a 512 px
photograph shrunk to 256, FAIR's high-pass input differs by 22-28 % (max
relative) between PIL's antialiased bilinear filter and OpenCV's bilinear
interpolation. Each method's config therefore defaults to its official loader's.

* ``pil_bilinear``: PIL ``BILINEAR`` (a triangle filter widened by the scale
  factor when shrinking, i.e. antialiased). It is what torchvision's ``Resize``
  does on PIL images: PyramidFlow's official loader (``Resize(x_size)`` on a PIL
  image).
* ``cv2_linear``: OpenCV ``cv2.resize(..., INTER_LINEAR)``. It interpolates
  between the 2x2 nearest source pixels at half-pixel centres
  (``src = (dst + 0.5) * in / out - 0.5``, clamped at the borders), with no
  antialiasing. This is FAIR's official loader. Computed here in float64 and
  rounded half up; OpenCV's 11-bit fixed-point weights differ from this by at
  most one grey level (tested against OpenCV when it is installed).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

RESIZE_METHODS = ("pil_bilinear", "cv2_linear")

__all__ = ["RESIZE_METHODS", "check_resize", "cv2_linear_resize", "resize_image"]


def check_resize(method: str) -> str:
    if method not in RESIZE_METHODS:
        raise ValueError(f"config key data.resize={method!r}: use one of {RESIZE_METHODS}")
    return method


def _linear_taps(out: int, inp: int):
    x = (np.arange(out) + 0.5) * (inp / out) - 0.5
    x0 = np.floor(x).astype(np.int64)
    f = x - x0
    f = np.where(x0 < 0, 0.0, f)
    x0 = np.clip(x0, 0, inp - 1)
    f = np.where(x0 >= inp - 1, 0.0, f)
    return x0, np.minimum(x0 + 1, inp - 1), f


def cv2_linear_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """OpenCV-style bilinear resize (no antialiasing) of a uint8 ``[H, W]`` or ``[H, W, C]`` image
    to ``size = (height, width)``."""
    a = np.asarray(image)
    h, w = size
    y0, y1, fy = _linear_taps(h, a.shape[0])
    x0, x1, fx = _linear_taps(w, a.shape[1])
    a = a.astype(np.float64)
    fx = fx.reshape((1, -1) + (1,) * (a.ndim - 2))
    fy = fy.reshape((-1, 1) + (1,) * (a.ndim - 2))
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    out = top * (1 - fy) + bottom * fy
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def resize_image(image: Image.Image, size: int, method: str = "pil_bilinear") -> np.ndarray:
    """An RGB PIL image resized to ``size x size`` as uint8 ``[size, size, 3]``."""
    check_resize(method)
    if (image.height, image.width) == (size, size):
        return np.asarray(image, dtype=np.uint8)
    if method == "pil_bilinear":
        return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return cv2_linear_resize(np.asarray(image, dtype=np.uint8), (size, size))
