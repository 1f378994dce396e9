"""Similarity and anomaly-scoring functions (SSIM, MSGMS, CIELAB, FAIR's anomaly map)."""

from jaxflow_ad.scoring.color import rgb_to_lab
from jaxflow_ad.scoring.fair_score import color_difference_map, fair_anomaly_map, image_scores
from jaxflow_ad.scoring.similarity import (
    gms_map,
    gradient_magnitude,
    mean_filter,
    msgms_map,
    restoration_loss,
    ssim,
    ssim_map,
)

__all__ = [
    "color_difference_map",
    "fair_anomaly_map",
    "gms_map",
    "gradient_magnitude",
    "image_scores",
    "mean_filter",
    "msgms_map",
    "restoration_loss",
    "rgb_to_lab",
    "ssim",
    "ssim_map",
]
