"""Non-invertible building blocks: UNet, convolutions with a CPU-friendly weight gradient, cross-attention,
residual blocks, memory banks (greedy coreset, k-NN) and uncertainty fusion."""

from jaxflow_ad.nn.attention import CrossAttention, ResidualBlock
from jaxflow_ad.nn.conv import conv2d, conv2d_nearest_up2
from jaxflow_ad.nn.memory_bank import greedy_coreset, knn_score, uncertainty_weights
from jaxflow_ad.nn.unet import UNet, upsample_bilinear_align_corners

__all__ = [
    "CrossAttention",
    "ResidualBlock",
    "UNet",
    "conv2d",
    "conv2d_nearest_up2",
    "greedy_coreset",
    "knn_score",
    "uncertainty_weights",
    "upsample_bilinear_align_corners",
]
