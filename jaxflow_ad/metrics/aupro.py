"""AUPRO: normalised area under the per-region-overlap (PRO) curve up to a false-positive rate.

Definition (Bergmann et al., "Uninformed Students", CVPR 2020, Sec. 4.2; "The MVTec Anomaly
Detection Dataset", IJCV 2021, Sec. 4.1), computed as the official MVTec AD evaluation
script does:

* Ground-truth regions are the connected components of each binarised mask (mask > 0) with
  8-connectivity (`scipy.ndimage.label` with a 3x3 block of ones). Components never span
  images. Let R be the number of regions over the whole test set and B the number of
  background pixels (label 0: every pixel of a normal image plus the defect-free pixels of
  defective images).
* For a threshold t, a pixel is predicted anomalous when score >= t.
  FPR(t) = #{background pixels predicted anomalous} / B, and
  PRO(t) = (1/R) sum_k |{pixels of region k predicted anomalous}| / |region k|.
* The exact curve: all pixels of all images are sorted once by descending score; walking
  down that order, a background pixel raises the false-positive count by 1 and a pixel of
  region k raises the PRO sum by 1/|region k|. Cumulative sums divided by B and R give
  (FPR, PRO) after each pixel. Of each run of tied scores only the last point is kept (a
  threshold cannot split tied pixels). Values are clipped to <= 1 and (0, 0) is prepended.
* AUPRO = (area under PRO over FPR in [0, fpr_limit], trapezoid rule, with PRO linearly
  interpolated at exactly FPR = fpr_limit) / fpr_limit, so a perfect map scores 1.
  The standard limit is 0.3.

Counts are int64 and rates float64. Degenerate input (no background pixel, or no anomalous
region at all) returns 0.0 with a `DegenerateMetricWarning`, as anomalib >= 2.3 returns 0
there; we do not return NaN because it propagates silently through averaged reports.

The approximate variants (a fixed grid of 100-200 thresholds; rescaling the FPR axis; no FPR
cut, as in PyramidFlow's code) are not implemented; `fpr_limit=1.0` gives the exact area over
the whole FPR range.
"""

from __future__ import annotations

import warnings

import numpy as np

from jaxflow_ad.metrics._curves import sweep
from jaxflow_ad.metrics._inputs import DegenerateMetricWarning, PixelData, gather_pixels


def _check_fpr_limit(fpr_limit) -> float:
    try:
        lim = float(fpr_limit)
    except (TypeError, ValueError):
        raise ValueError(f"fpr_limit={fpr_limit!r}; expected a number in (0, 1].") from None
    if not 0.0 < lim <= 1.0:
        raise ValueError(
            f"fpr_limit={fpr_limit!r}; expected a number in (0, 1] (the standard value is "
            "0.3, 1.0 integrates the whole curve)."
        )
    return lim


def _degenerate(px: PixelData) -> str | None:
    n_bg = int(px.y.shape[0] - np.count_nonzero(px.y))
    if px.n_regions == 0:
        return (
            f"AUPRO is undefined: the masks contain no anomalous region (all "
            f"{px.y.shape[0]} pixels are background), so PRO divides by zero. "
            "Returning 0.0."
        )
    if n_bg == 0:
        return (
            "AUPRO is undefined: every pixel is anomalous (no background pixel), so "
            "the false-positive rate divides by zero. Returning 0.0."
        )
    return None


def pro_curve_from_pixels(px: PixelData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact (FPR, PRO, threshold) curve from flattened `PixelData` with region labels.

    See the module docstring for the definition. The first point is (0, 0) with threshold
    +inf; FPR and PRO are non-decreasing; threshold k is the score at which point k is
    reached (predicted anomalous: score >= threshold).
    """
    res = sweep(px, curve=True)
    fpr = np.concatenate(([0.0], res["fpr"]))
    pro = np.concatenate(([0.0], res["pro"]))
    thresholds = np.concatenate(([np.inf], res["thresholds"]))
    return fpr, pro, thresholds


def aupro_from_pixels(px: PixelData, fpr_limit: float = 0.3) -> float:
    """AUPRO from already flattened `PixelData` with region labels."""
    lim = _check_fpr_limit(fpr_limit)
    msg = _degenerate(px)
    if msg is not None:
        warnings.warn(msg, DegenerateMetricWarning, stacklevel=3)
        return 0.0
    return sweep(px, fpr_limit=lim)["pro_area"] / lim


def pro_curve(masks, maps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact PRO curve (official MVTec AD definition; see the module docstring).

    Args:
      masks: [N,H,W] array or list of N [H,W] arrays; anomalous where > 0.
      maps: anomaly maps of the same shapes as the masks, image by image.

    Returns:
      (fpr, pro, thresholds), float64, starting at (0, 0, +inf), non-decreasing in fpr.

    Raises:
      ValueError: as `aupro`, and also for degenerate input (no region or no background).
    """
    px = gather_pixels(masks, maps, with_regions=True, func="pro_curve")
    msg = _degenerate(px)
    if msg is not None:
        raise ValueError(msg.replace(" Returning 0.0.", ""))
    return pro_curve_from_pixels(px)


def aupro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to `fpr_limit` (official MVTec AD AUPRO).

    Args:
      masks: [N,H,W] array or list of N [H,W] arrays (any size per image); anomalous where
        > 0. Normal images need an all-zero mask: their pixels are background.
      maps: anomaly maps with the same shape as the masks, image by image (upsample with
        `resize_maps` first, or use `evaluate`); finite.
      fpr_limit: upper end of the FPR integration range, in (0, 1]; 0.3 by default.

    Returns:
      Area under PRO(FPR) on [0, fpr_limit] divided by fpr_limit, in [0, 1]. A map that puts
      every anomalous pixel above every background pixel scores 1.0; a constant map scores
      fpr_limit / 2 (its curve is the straight line from (0,0) to (1,1)).
      0.0 with a `DegenerateMetricWarning` if there is no anomalous region or no background.

    Raises:
      ValueError: different counts or shapes, NaN/inf in the maps, bad `fpr_limit`.
    """
    lim = _check_fpr_limit(fpr_limit)
    px = gather_pixels(masks, maps, with_regions=True, func="aupro")
    return aupro_from_pixels(px, lim)
