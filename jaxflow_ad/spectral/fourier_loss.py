"""Fourier loss of PyramidFlow (Eq. 9): the mean magnitude of the 2-D spectrum.

The official code computes ``torch.fft.fft2(d).abs().mean()`` with the
unnormalised FFT over the last two axes of a real map ``d``. A real signal's
spectrum is conjugate-symmetric, so the same number comes from the half
spectrum of ``rfft2`` with each column counted as often as it appears in the
full spectrum (about half the work).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mean_abs_fft2(x: jax.Array) -> jax.Array:
    """``mean(|fft2(x)|)`` over all axes, the FFT over the last two; ``x`` real."""
    w = x.shape[-1]
    spec = jnp.abs(jnp.fft.rfft2(x))  # (..., H, W//2 + 1)
    n_half = spec.shape[-1]
    weights = jnp.full((n_half,), 2.0, spec.dtype).at[0].set(1.0)
    if w % 2 == 0:
        weights = weights.at[-1].set(1.0)  # the Nyquist column appears once
    return jnp.sum(spec * weights) / (x.size)


def mean_abs_fft2_reference(x: jax.Array) -> jax.Array:
    """The official formula, full complex spectrum (kept for tests)."""
    return jnp.mean(jnp.abs(jnp.fft.fft2(x)))
