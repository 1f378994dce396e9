"""Host-side (NumPy/SciPy/scikit-learn) anomaly-detection metrics.

Image level: `image_auroc`, `image_ap`, `image_f1_max`. Pixel level: `pixel_auroc`,
`pixel_ap`, `pixel_f1_max`, and `aupro` / `pro_curve` (official MVTec AD definition,
8-connected regions, exact curve, FPR limit 0.3). `evaluate` computes all of them at native
mask resolution or at a fixed square size, from one shared sort of the pixels (pixel
metrics equal scikit-learn's to ~1e-12, at a quarter of its memory); `resize_maps` /
`resize_masks` do the resizing. Generic 1-D versions: `average_precision`, `f1_max`. At a fixed threshold:
`quantile_threshold` (on normal images' scores) and `classification_at` (precision, recall,
F1, false-alarm and miss rates).
Undefined metrics raise ValueError, except AUPRO without regions or background, which
returns 0.0 with a `DegenerateMetricWarning`.
"""

from jaxflow_ad.metrics._curves import area_up_to
from jaxflow_ad.metrics._inputs import DegenerateMetricWarning
from jaxflow_ad.metrics.aupro import aupro, pro_curve
from jaxflow_ad.metrics.classification import (
    average_precision,
    f1_max,
    image_ap,
    image_auroc,
    image_f1_max,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
)
from jaxflow_ad.metrics.evaluate import DEFECT_KEYS, METRIC_KEYS, evaluate, evaluate_by_defect
from jaxflow_ad.metrics.resize import resize_maps, resize_masks
from jaxflow_ad.metrics.threshold import AT_THRESHOLD_KEYS, classification_at, normalize_scores, quantile_threshold

__all__ = [
    "AT_THRESHOLD_KEYS",
    "classification_at",
    "normalize_scores",
    "quantile_threshold",
    "DegenerateMetricWarning",
    "METRIC_KEYS",
    "area_up_to",
    "aupro",
    "average_precision",
    "evaluate",
    "evaluate_by_defect",
    "DEFECT_KEYS",
    "f1_max",
    "image_ap",
    "image_auroc",
    "image_f1_max",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1_max",
    "pro_curve",
    "resize_maps",
    "resize_masks",
]
