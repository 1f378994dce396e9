"""Non-invertible building blocks: UNet, convolutions with a CPU-friendly weight gradient, and (imported
on first use, as ``jaxflow_ad.nn.attention``, ``memory_bank``, ``blocks``, ``deform_conv`` and ``fse`` import
the flows package, which imports this one) cross-attention, residual blocks, memory banks, uncertainty
fusion, MADFlow's blocks (pixel (un)shuffle, SE, CBAM, StarReLU, positional encoding), the modulated
deformable convolution and frequency-spatial enhancement."""

from jaxflow_ad.nn.conv import conv2d, conv2d_nearest_up2
from jaxflow_ad.nn.unet import UNet, upsample_bilinear_align_corners

_LAZY = {
    "CrossAttention": "attention",
    "ResidualBlock": "attention",
    "greedy_coreset": "memory_bank",
    "knn_score": "memory_bank",
    "uncertainty_weights": "memory_bank",
    "CBAM": "blocks",
    "ConvTranspose2x2": "blocks",
    "SqueezeExcite": "blocks",
    "StarReLU": "blocks",
    "conv_transpose_kernel_to_dense": "blocks",
    "downsample2_bilinear": "blocks",
    "pixel_shuffle": "blocks",
    "pixel_unshuffle": "blocks",
    "positional_encoding_2d": "blocks",
    "resize_bilinear": "blocks",
    "DeformConv2d": "deform_conv",
    "deform_conv2d": "deform_conv",
    "FSE": "fse",
    "fse_intermediates": "fse",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CBAM",
    "ConvTranspose2x2",
    "CrossAttention",
    "DeformConv2d",
    "FSE",
    "ResidualBlock",
    "SqueezeExcite",
    "StarReLU",
    "UNet",
    "conv2d",
    "conv2d_nearest_up2",
    "conv_transpose_kernel_to_dense",
    "deform_conv2d",
    "downsample2_bilinear",
    "fse_intermediates",
    "greedy_coreset",
    "knn_score",
    "pixel_shuffle",
    "pixel_unshuffle",
    "positional_encoding_2d",
    "uncertainty_weights",
    "resize_bilinear",
    "upsample_bilinear_align_corners",
]
