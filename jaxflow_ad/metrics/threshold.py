"""Decisions at a fixed threshold: the threshold chosen on normal images, and the
precision, recall and F1 it gives on a labelled split.

The threshold-free scores (AUROC, AP, F1-max) say how well scores rank; an inspection
line needs one threshold fixed *before* the test images are seen. The usual unsupervised
choice, and the one used here, is a quantile of the scores of held-out normal images:
with quantile ``q`` about a fraction ``1 - q`` of unseen normal images is expected above
it. NF-BMR (Zhang et al., CMC 2024, Tables 2 and 4) reports precision, recall and F1
without saying how its threshold was chosen; this is the choice made for it.

Convention (as :func:`~jaxflow_ad.metrics.f1_max`): an image is predicted anomalous when
``score >= threshold``.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix

from jaxflow_ad.metrics._inputs import check_image_inputs

AT_THRESHOLD_KEYS = ("precision", "recall", "f1", "false_alarm_rate", "miss_rate")


def normalize_scores(scores, threshold: float, low: float):
    """Scores mapped to [0, 1] with the threshold at 0.5: linear from ``low`` (0; the lowest score of
    the held-out normal images) to ``threshold`` (0.5), continued with the same slope above it, clipped.
    A "min-max" normalisation whose maximum is replaced by the threshold, so that a decision is simply
    ``normalized >= 0.5`` whatever the method's score scale. Works on NumPy and JAX arrays alike
    (only arithmetic and ``clip``), so an exported scorer computes it in its graph."""
    span = max(float(threshold) - float(low), 1e-12)
    return (0.5 + 0.5 * (scores - float(threshold)) / span).clip(0.0, 1.0)


def quantile_threshold(normal_scores, quantile: float) -> float:
    """The ``quantile`` of ``normal_scores`` (NumPy's linear interpolation); 1.0 is their maximum.

    Raises:
      ValueError: ``quantile`` outside (0, 1], no scores, or a non-finite score.
    """
    q = float(quantile)
    if not 0.0 < q <= 1.0:
        raise ValueError(f"threshold quantile must be in (0, 1], got {quantile} (config key eval.threshold.quantile)")
    s = np.asarray(normal_scores, np.float64).ravel()
    if s.size == 0:
        raise ValueError("quantile_threshold needs at least one normal image's score, got none")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"quantile_threshold: {int(np.sum(~np.isfinite(s)))} of {s.size} normal scores are not finite")
    return float(np.quantile(s, q))


def classification_at(labels, scores, threshold: float) -> dict[str, float]:
    """Image-level decisions ``score >= threshold`` against ``labels`` (1 = anomalous).

    Returns ``precision`` (0 when nothing is flagged), ``recall``, ``f1`` (0 when precision
    and recall are both 0), ``false_alarm_rate`` (flagged good images / good images; NaN
    without good images), ``miss_rate`` (1 - recall; NaN without anomalous images) and the
    counts ``tp``, ``fp``, ``fn``, ``tn``. Counts come from
    :func:`sklearn.metrics.confusion_matrix`.
    """
    y, s = check_image_inputs(labels, scores, "classification_at")
    t = float(threshold)
    if not np.isfinite(t):
        raise ValueError(f"classification_at: the threshold must be finite, got {threshold}")
    pred = (s >= t).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y.astype(np.int64), pred, labels=[0, 1]).ravel())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "false_alarm_rate": fp / (fp + tn) if fp + tn else float("nan"),
        "miss_rate": 1.0 - recall if tp + fn else float("nan"),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }
