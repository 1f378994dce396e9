"""Threshold-free detection and segmentation scores: AUROC, average precision, F1-max.

Image level ("detection") uses one score per image, label 1 = anomalous. Pixel level
("segmentation") flattens all pixels of all images into one list, label = mask > 0, as the
MVTec AD benchmark does for pixel AUROC (Bergmann et al., "The MVTec Anomaly Detection
Dataset", IJCV 2021, Sec. 4.1). Masks and maps must have the same size per image here;
to evaluate at another resolution use `jaxflow_ad.metrics.evaluate` or `resize_maps`.

Definitions:

* AUROC: area under the ROC curve (TPR against FPR over all thresholds, trapezoid rule),
  computed by `sklearn.metrics.roc_auc_score` (Fawcett, "An introduction to ROC analysis",
  Pattern Recognition Letters 2006).
* AP: `sklearn.metrics.average_precision_score`, the step-wise (not interpolated) area
  `sum_n (R_n - R_{n-1}) P_n` over the thresholds of the precision-recall curve.
* F1-max: the largest F1 = 2PR/(P+R) over every threshold of the precision-recall curve
  (each distinct score, predicting anomalous when score >= threshold), as reported for VisA
  and in anomalib ("F1Max"). It is an optimistic, oracle-threshold number.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from jaxflow_ad.metrics._inputs import (
    check_image_inputs,
    gather_pixels,
    require_both_classes,
    require_positives,
)


def _f1_from_pr(precision, recall, thresholds) -> tuple[float, float]:
    # The last PR point (P=1, R=0) has no threshold and F1 = 0; drop it.
    p, r = precision[:-1], recall[:-1]
    denom = p + r
    f1 = np.divide(2.0 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    k = int(np.argmax(f1))
    return float(f1[k]), float(thresholds[k])


# ----------------------------------------------------------------------------- generic


def average_precision(labels, scores) -> float:
    """Average precision of 1-D binary `labels` (0/1 or bool) against `scores`.

    AP = sum_n (R_n - R_{n-1}) P_n over the thresholds of the precision-recall curve
    (`sklearn.metrics.average_precision_score`; no interpolation). Raises ValueError if there
    are no positives (recall is undefined).
    """
    y, s = check_image_inputs(labels, scores, "average_precision")
    require_positives(y, "average_precision", "samples")
    return float(average_precision_score(y, s))


def f1_max(labels, scores, *, return_threshold: bool = False):
    """Maximum F1 over all thresholds of the precision-recall curve of 1-D `labels`/`scores`.

    A sample is predicted positive when score >= threshold; the thresholds are the distinct
    scores (`sklearn.metrics.precision_recall_curve`). F1 = 2PR/(P+R), 0 where P+R = 0.

    Returns:
      The F1-max as a float, or `(f1_max, threshold)` with `return_threshold=True`.
    """
    return _f1_max(labels, scores, "f1_max", "samples", return_threshold)


def _f1_max(labels, scores, name: str, what: str, return_threshold: bool):
    y, s = check_image_inputs(labels, scores, name)
    require_positives(y, name, what)
    f1, thr = _f1_from_pr(*precision_recall_curve(y, s))
    return (f1, thr) if return_threshold else f1


# ----------------------------------------------------------------------------- image level


def image_auroc(labels, scores) -> float:
    """Image-level AUROC (detection).

    Args:
      labels: [N] 0 = normal, 1 = anomalous (or bool).
      scores: [N] anomaly scores, higher = more anomalous; finite.

    Returns:
      `sklearn.metrics.roc_auc_score(labels, scores)`: the probability that a random
      anomalous image scores above a random normal one (ties count 1/2).

    Raises:
      ValueError: mismatched lengths, labels other than 0/1, non-finite scores, or only one
        class present (the ROC curve is then undefined).
    """
    y, s = check_image_inputs(labels, scores, "image_auroc")
    require_both_classes(y, "image_auroc", "images")
    return float(roc_auc_score(y, s))


def image_ap(labels, scores) -> float:
    """Image-level average precision (see `average_precision`)."""
    y, s = check_image_inputs(labels, scores, "image_ap")
    require_positives(y, "image_ap", "images")
    return float(average_precision_score(y, s))


def image_f1_max(labels, scores, *, return_threshold: bool = False):
    """Image-level F1-max (see `f1_max`)."""
    return _f1_max(labels, scores, "image_f1_max", "images", return_threshold)


# ----------------------------------------------------------------------------- pixel level


def pixel_auroc(masks, maps) -> float:
    """Pixel-level AUROC over all pixels of all images, pooled (segmentation).

    Args:
      masks: [N,H,W] array or list of N [H,W] arrays; a pixel is anomalous when mask > 0.
        Normal images need an all-zero mask.
      maps: anomaly maps with the same shape as the masks, image by image; finite.

    Returns:
      `sklearn.metrics.roc_auc_score` on the flattened, concatenated pixels. For a whole
      test set prefer `evaluate`, which gets the same number (to ~1e-12) and the other pixel
      metrics from one shared sort, with about a quarter of the memory.

    Raises:
      ValueError: different counts or shapes (use `resize_maps` or `evaluate`), NaN/inf in
        the maps, or masks that are all empty or all anomalous.
    """
    px = gather_pixels(masks, maps, func="pixel_auroc")
    require_both_classes(px.y, "pixel_auroc", "pixels")
    return float(roc_auc_score(px.y, px.s))


def pixel_ap(masks, maps) -> float:
    """Pixel-level average precision over all pooled pixels (see `average_precision`)."""
    px = gather_pixels(masks, maps, func="pixel_ap")
    require_positives(px.y, "pixel_ap", "pixels")
    return float(average_precision_score(px.y, px.s))


def pixel_f1_max(masks, maps, *, return_threshold: bool = False):
    """Pixel-level F1-max over all pooled pixels (see `f1_max`)."""
    px = gather_pixels(masks, maps, func="pixel_f1_max")
    require_positives(px.y, "pixel_f1_max", "pixels")
    f1, thr = _f1_from_pr(*precision_recall_curve(px.y, px.s))
    return (f1, thr) if return_threshold else f1
