"""Pure jax.numpy.fft functions: high-pass filters, Sobel, Fourier loss, MASF's spectral split,
masks, phase perturbation (TTSA) and distillation losses, and global (FFT) filters with filter-bank
mixing (GFNet / DFFormer, MADFlow's FSE).

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
from jaxflow_ad.spectral.global_filter import filter_kernel, global_filter, mix_filter_bank
from jaxflow_ad.spectral.masf import (
    amplitude_mse,
    apply_frequency_mask,
    cosine_distance,
    distillation_loss,
    frequency_mask,
    hermitian_phase_noise,
    low_frequency_mask,
    patch_mask,
    perturb_phase,
    spectral_split,
    ttsa_views,
)
from jaxflow_ad.spectral.sobel import (
    central_difference_transfer,
    sobel_features,
    sobel_fft,
    sobel_kernel,
    sobel_transfer,
)

__all__ = [
    "amplitude_mse",
    "apply_centered_transfer",
    "apply_frequency_mask",
    "cosine_distance",
    "distillation_loss",
    "frequency_mask",
    "hermitian_phase_noise",
    "low_frequency_mask",
    "patch_mask",
    "perturb_phase",
    "spectral_split",
    "ttsa_views",
    "butterworth_highpass",
    "central_difference_transfer",
    "filter_kernel",
    "frequency_distance",
    "gaussian_highpass",
    "global_filter",
    "highpass_filter",
    "highpass_transfer",
    "ideal_highpass",
    "mean_abs_fft2",
    "mean_abs_fft2_reference",
    "mix_filter_bank",
    "rgb_to_gray",
    "sobel_features",
    "sobel_fft",
    "sobel_kernel",
    "sobel_transfer",
]
