"""Non-invertible building blocks: UNet, convolutions with a CPU-friendly weight gradient."""

from jaxflow_ad.nn.conv import conv2d, conv2d_nearest_up2
from jaxflow_ad.nn.unet import UNet, upsample_bilinear_align_corners

__all__ = ["UNet", "conv2d", "conv2d_nearest_up2", "upsample_bilinear_align_corners"]
