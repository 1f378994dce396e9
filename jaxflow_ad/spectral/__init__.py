"""Pure jax.numpy.fft functions: high-pass filters, Sobel, Fourier loss.

``jaxflow_ad.spectral.sobel`` is the Sobel module (its spatial filter is
``jaxflow_ad.spectral.sobel.sobel``); the package does not re-export that
function so the module name is not shadowed.
"""

from jaxflow_ad.spectral.filters import (
    apply_centered_transfer,
    butterworth_highpass,
    frequency_distance,
    gaussian_highpass,
    highpass_filter,
    highpass_transfer,
    ideal_highpass,
    rgb_to_gray,
)
from jaxflow_ad.spectral.fourier_loss import mean_abs_fft2, mean_abs_fft2_reference
from jaxflow_ad.spectral.sobel import (
    central_difference_transfer,
    sobel_features,
    sobel_fft,
    sobel_kernel,
    sobel_transfer,
)

__all__ = [
    "apply_centered_transfer",
    "butterworth_highpass",
    "central_difference_transfer",
    "frequency_distance",
    "gaussian_highpass",
    "highpass_filter",
    "highpass_transfer",
    "ideal_highpass",
    "mean_abs_fft2",
    "mean_abs_fft2_reference",
    "rgb_to_gray",
    "sobel_features",
    "sobel_fft",
    "sobel_kernel",
    "sobel_transfer",
]
