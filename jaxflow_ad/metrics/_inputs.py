"""Input checking and flattening shared by the metric functions (host-side NumPy).

Every public metric funnels its arguments through these helpers, so that bad input
raises one `ValueError` that names the argument, the image and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from jaxflow_ad.metrics._interp import bilinear_resize, nearest_resize

# 8-connectivity (3x3 block of ones), as `scipy.ndimage.label(gt, np.ones((3, 3)))`
# in the official MVTec AD evaluation code.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class DegenerateMetricWarning(UserWarning):
    """A metric was asked for on data where it is undefined and a fallback value is returned."""


def _describe(x) -> str:
    shape = getattr(x, "shape", None)
    return f"shape {tuple(shape)}" if shape is not None else type(x).__name__


def image_list(x, name: str) -> list[np.ndarray]:
    """Returns `x` ([N,H,W] array or a sequence of N [H,W] arrays) as a list of 2-D arrays.

    Views are returned where possible: nothing is copied for an array input.
    """
    if x is None:
        raise ValueError(f"{name} is None; pass an array [N,H,W] or a list of N arrays [H,W].")
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise ValueError(f"{name} is empty: there are no images to evaluate.")
        out = []
        for i, a in enumerate(x):
            if a is None:
                raise ValueError(
                    f"{name}[{i}] is None; pass an all-zero mask of the image's size for a "
                    "normal image, so that its pixels count as background."
                )
            a = np.asarray(a)
            if a.ndim != 2:
                raise ValueError(
                    f"{name}[{i}] has shape {a.shape}; every entry must be a 2-D [H,W] array "
                    "(drop a channel axis with a[..., 0] or a[0])."
                )
            out.append(a)
        return out
    a = np.asarray(x)
    if a.ndim != 3:
        raise ValueError(
            f"{name} has {_describe(a)}; expected an array [N,H,W] or a list of N arrays [H,W] "
            "(for a single image use x[None]; drop a channel axis of size 1 first)."
        )
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty: there are no images to evaluate.")
    return list(a)


def _check_numeric(a: np.ndarray, what: str) -> None:
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
        raise ValueError(f"{what} has dtype {a.dtype}; expected real numbers.")


def check_finite_list(arrays: Sequence[np.ndarray], name: str) -> None:
    """Raises if any array holds NaN or +-inf, naming how many and in which images."""
    nan_total = inf_total = 0
    bad = []
    for i, a in enumerate(arrays):
        _check_numeric(a, f"{name}[{i}]")
        if not np.issubdtype(a.dtype, np.floating):
            continue
        n_nan = int(np.count_nonzero(np.isnan(a)))
        n_inf = int(np.count_nonzero(np.isinf(a)))
        if n_nan or n_inf:
            bad.append(i)
            nan_total += n_nan
            inf_total += n_inf
    if bad:
        raise ValueError(
            f"{name} contain {nan_total} NaN and {inf_total} infinite value(s) in "
            f"{len(bad)} of {len(arrays)} image(s) (first: image {bad[0]}); the metrics rank "
            "scores and are undefined for non-finite values. Check the model output "
            "(e.g. a diverged flow or a log of zero) before evaluating."
        )


def check_image_inputs(labels, scores, func: str) -> tuple[np.ndarray, np.ndarray]:
    """Validates image-level `labels` (0/1 or bool, [N]) and `scores` ([N], finite)."""
    y = np.asarray(labels)
    s = np.asarray(scores)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"{func}: labels and scores must be 1-D [N]; got labels {y.shape} and scores {s.shape}.")
    if y.shape[0] != s.shape[0]:
        raise ValueError(
            f"{func}: labels has {y.shape[0]} entries but scores has {s.shape[0]}; there must "
            "be one label and one score per image."
        )
    if y.shape[0] == 0:
        raise ValueError(f"{func}: no images (labels and scores are empty).")
    _check_numeric(y, f"{func}: labels")
    if y.dtype != bool:
        values = np.unique(y)
        if not np.all(np.isin(values, (0, 1))):
            raise ValueError(
                f"{func}: labels must be 0 (normal) or 1 (anomalous); got values "
                f"{values[:10].tolist()}. Did you swap labels and scores?"
            )
        y = y == 1
    _check_numeric(s, f"{func}: scores")
    n_nan = int(np.count_nonzero(np.isnan(s))) if np.issubdtype(s.dtype, np.floating) else 0
    n_inf = int(np.count_nonzero(np.isinf(s))) if np.issubdtype(s.dtype, np.floating) else 0
    if n_nan or n_inf:
        raise ValueError(
            f"{func}: scores contain {n_nan} NaN and {n_inf} infinite value(s) out of "
            f"{s.shape[0]}; the metric ranks scores and is undefined for non-finite values."
        )
    return y, s


def require_both_classes(y: np.ndarray, func: str, unit: str) -> None:
    """AUROC needs both classes: with one class either the TPR or the FPR is 0/0."""
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.shape[0]:
        which = "anomalous" if n_pos else "normal"
        missing = "normal" if n_pos else "anomalous"
        raise ValueError(
            f"{func} is undefined: all {y.shape[0]} {unit} are {which}. The ROC curve needs "
            f"at least one {missing} and one {which} {unit[:-1]}: otherwise its "
            f"{'false' if n_pos else 'true'} positive rate divides by zero."
        )


def require_positives(y: np.ndarray, func: str, unit: str) -> None:
    """Precision-recall metrics need at least one positive: recall divides by their count."""
    if not np.any(y):
        raise ValueError(
            f"{func} is undefined: none of the {y.shape[0]} {unit} is anomalous, so recall "
            "(true positives / anomalous count) divides by zero."
        )


class PixelData:
    """Flattened pixel data of a test set: one entry per evaluated pixel, all images concatenated.

    Attributes:
      y: bool [P], True for anomalous (mask > 0) pixels.
      s: float32 or float64 [P], the anomaly scores.
      regions: int32/int64 [P] or None; 0 for background, k>=1 for the k-th 8-connected
        anomalous region, numbered uniquely across images.
      n_regions: the number of regions.
    """

    def __init__(self, y, s, regions, n_regions):
        self.y, self.s, self.regions, self.n_regions = y, s, regions, n_regions


def target_shapes(masks: list[np.ndarray], maps: list[np.ndarray], resolution, func: str):
    """The [H,W] at which each image is evaluated.

    `resolution=None`: masks and maps must already agree (raises otherwise).
    `"native"`: each mask's own size. An int: that square size.
    """
    if len(masks) != len(maps):
        raise ValueError(
            f"{func}: got {len(masks)} masks but {len(maps)} anomaly maps; there must be one "
            "mask per map (an all-zero mask for a normal image)."
        )
    if resolution is None:
        for i, (m, a) in enumerate(zip(masks, maps)):
            if m.shape != a.shape:
                raise ValueError(
                    f"{func}: mask {i} has shape {m.shape} but map {i} has shape {a.shape}. "
                    "Upsample the maps to the mask sizes with "
                    "resize_maps(maps, [m.shape for m in masks]), or use "
                    "evaluate(..., resolution='native' or an int)."
                )
        return [m.shape for m in masks]
    if isinstance(resolution, str):
        if resolution != "native":
            raise ValueError(f"{func}: resolution={resolution!r}; expected 'native' or a positive int.")
        return [m.shape for m in masks]
    if isinstance(resolution, (bool, np.bool_)) or not isinstance(resolution, (int, np.integer)) or resolution <= 0:
        raise ValueError(f"{func}: resolution={resolution!r}; expected 'native' or a positive int.")
    r = int(resolution)
    return [(r, r)] * len(masks)


MASK_RESIZE = ("nearest", "bilinear_round", "cv2_exact")


def resize_mask(mask: np.ndarray, shape, how: str = "nearest") -> np.ndarray:
    """A bool mask resized to ``shape`` as an evaluation protocol does it.

    * ``nearest``: nearest neighbour at half-pixel centres (anomalib's rule).
    * ``bilinear_round``: the 0/1 mask resized with PIL's bilinear filter and rounded (>= 0.5):
      PyramidFlow's official loader (``Resize`` then ``round()``).
    * ``cv2_exact``: the 0/255 mask resized with OpenCV's bilinear interpolation, then
      ``/ 255`` cast to uint8, so a pixel counts only where it stays exactly 255: FAIR's
      official evaluation (soft edge pixels become normal).
    """
    mask = np.asarray(mask, bool)
    if mask.shape == tuple(shape):
        return mask
    if how == "nearest":
        return nearest_resize(mask, shape)
    if how == "bilinear_round":
        from PIL import Image

        f = Image.fromarray(mask.astype(np.float32), mode="F").resize((int(shape[1]), int(shape[0])), Image.BILINEAR)
        return np.asarray(f) >= 0.5
    if how == "cv2_exact":
        from jaxflow_ad.data.resize import cv2_linear_resize

        return cv2_linear_resize(mask.astype(np.uint8) * 255, tuple(shape)) == 255
    raise ValueError(f"mask_resize={how!r} (config key eval.mask_resize): use one of {MASK_RESIZE}")


def gather_pixels(
    masks, maps, *, resolution=None, with_regions: bool = False, func: str = "metric", mask_resize: str = "nearest"
) -> PixelData:
    """Validates, resizes and flattens masks and maps into one `PixelData` in a single pass.

    Memory: the output holds P bools, P scores (float32 unless a map is float64 or a wide
    integer type) and, with `with_regions`, P int32 labels; each image is resized just before
    it is copied in, so at most one resized image exists at a time.
    """
    masks = image_list(masks, "masks")
    maps = image_list(maps, "maps")
    shapes = target_shapes(masks, maps, resolution, func)
    for i, m in enumerate(masks):
        _check_numeric(m, f"masks[{i}]")
    check_finite_list(maps, "maps")

    dtype = np.result_type(np.float32, *[a.dtype for a in maps])
    sizes = [int(h) * int(w) for h, w in shapes]
    total = sum(sizes)
    if total == 0:
        raise ValueError(f"{func}: all images are empty (0 pixels).")
    y = np.empty(total, dtype=bool)
    s = np.empty(total, dtype=dtype)
    regions = None
    if with_regions:
        regions = np.empty(total, dtype=np.int32 if total < 2**31 - 1 else np.int64)
    n_regions = 0
    offset = 0
    for m, a, shape, k in zip(masks, maps, shapes, sizes):
        mb = m if m.dtype == bool else m > 0
        if mb.shape != tuple(shape):
            mb = resize_mask(mb, shape, mask_resize)
        if a.shape != tuple(shape):
            a = bilinear_resize(a, shape)
        sl = slice(offset, offset + k)
        y[sl] = mb.ravel()
        s[sl] = a.ravel()
        if with_regions:
            lab, n = ndimage.label(mb, structure=EIGHT_CONNECTED)
            seg = regions[sl]
            seg[:] = lab.ravel()
            if n_regions:
                seg[seg > 0] += n_regions
            n_regions += int(n)
        offset += k
    return PixelData(y, s, regions, n_regions)
