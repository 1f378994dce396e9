"""Pure jax.numpy.fft functions: high-pass filters, Sobel, Fourier loss."""
from jaxflow_ad.spectral.fourier_loss import mean_abs_fft2, mean_abs_fft2_reference

__all__ = ["mean_abs_fft2", "mean_abs_fft2_reference"]
