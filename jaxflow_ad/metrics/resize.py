"""Bringing anomaly maps and ground-truth masks to the evaluation resolution.

Two conventions exist in the literature (see `evaluate`):

* native: the official MVTec AD evaluation scores maps at the size of the ground-truth
  masks (700 to 1024 px for MVTec AD), so maps predicted at model resolution are upsampled
  to each mask's own size (`resize_maps`);
* fixed square size: anomalib resizes the masks with the same transform as the images and
  scores at model resolution (e.g. 256x256) (`resize_masks` + `resize_maps`).

Maps are resized bilinearly and masks by nearest neighbour, both with half-pixel centres;
see `jaxflow_ad.metrics._interp` for the exact sampling formula.
"""

from __future__ import annotations

import numpy as np

from jaxflow_ad.metrics._inputs import check_finite_list, image_list
from jaxflow_ad.metrics._interp import bilinear_resize, nearest_resize


def _is_size(x) -> bool:
    return (
        isinstance(x, (tuple, list, np.ndarray))
        and len(x) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in x)
    )


def _sizes_for(n: int, sizes, name: str) -> list[tuple[int, int]]:
    if isinstance(sizes, (int, np.integer)) and not isinstance(sizes, bool):
        sizes = (int(sizes), int(sizes))
    if _is_size(sizes):
        out = [(int(sizes[0]), int(sizes[1]))] * n
    else:
        try:
            out = [tuple(int(v) for v in s) for s in sizes]
        except TypeError:
            raise ValueError(
                f"{name}: sizes={sizes!r}; expected an int, one (H, W) pair or one (H, W) pair per image."
            ) from None
        if len(out) != n or any(len(s) != 2 for s in out):
            raise ValueError(
                f"{name}: got {len(out)} sizes for {n} images; pass one (H, W) pair per image "
                "(e.g. [m.shape for m in masks]) or a single (H, W) for all."
            )
    if any(h <= 0 or w <= 0 for h, w in out):
        raise ValueError(f"{name}: sizes must be positive; got {out[:3]}...")
    return out


def resize_maps(maps, sizes) -> np.ndarray | list[np.ndarray]:
    """Bilinearly resizes each anomaly map to its evaluation size.

    Sampling uses half-pixel centres with edge clamping, which for upsampling equals
    `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` and
    `scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest")` (the latter is checked in
    the tests). It is implemented here as two small interpolation matrices per image
    (`W_y @ map @ W_x.T`, in float64), so no anti-aliasing is applied when downsampling.

    Args:
      maps: [N,h,w] array or a list of N [h,w] arrays (NumPy or JAX).
      sizes: an int S (every map to SxS), one (H, W) pair for all maps, or one (H, W) pair
        per map, e.g. `[m.shape for m in masks]` for native-resolution evaluation.

    Returns:
      A float32 array [N,H,W] when all output sizes are equal, otherwise a list of 2-D
      arrays. Float64 maps stay float64.
    """
    maps = image_list(maps, "maps")
    check_finite_list(maps, "maps")
    sizes = _sizes_for(len(maps), sizes, "resize_maps")
    out = [bilinear_resize(a, s) for a, s in zip(maps, sizes)]
    if len(set(sizes)) == 1:
        return np.stack(out)
    return out


def resize_masks(masks, sizes) -> np.ndarray | list[np.ndarray]:
    """Binarises masks (value > 0) and resizes them by nearest neighbour.

    The source pixel of output pixel `o` on an axis resized from `I` to `O` is
    `floor((o + 0.5) * I / O)` (PIL `NEAREST`, torch `"nearest-exact"`); this can differ by
    one source pixel from torch's legacy `"nearest"` (`floor(o * I / O)`). Thin structures
    may vanish when downsampling, which is exactly why the official MVTec AD protocol
    evaluates at native resolution.

    Args:
      masks: [N,H,W] array or a list of N [H,W] arrays.
      sizes: an int S, one (h, w) pair for all, or one pair per mask.

    Returns:
      A bool array [N,h,w] when all sizes are equal, otherwise a list of bool 2-D arrays.
    """
    masks = image_list(masks, "masks")
    sizes = _sizes_for(len(masks), sizes, "resize_masks")
    out = [nearest_resize(m if m.dtype == bool else m > 0, s) for m, s in zip(masks, sizes)]
    if len(set(sizes)) == 1:
        return np.stack(out)
    return out
