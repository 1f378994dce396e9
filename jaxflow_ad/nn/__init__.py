"""Non-invertible building blocks: UNet, convolutions with a CPU-friendly weight gradient, and (imported
on first use, as ``jaxflow_ad.nn.attention`` and ``jaxflow_ad.nn.memory_bank`` import the flows
package, which imports this one) cross-attention, residual blocks, memory banks and uncertainty fusion."""

from jaxflow_ad.nn.conv import conv2d, conv2d_nearest_up2
from jaxflow_ad.nn.unet import UNet, upsample_bilinear_align_corners

_LAZY = {
    "CrossAttention": "attention",
    "ResidualBlock": "attention",
    "greedy_coreset": "memory_bank",
    "knn_score": "memory_bank",
    "uncertainty_weights": "memory_bank",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
