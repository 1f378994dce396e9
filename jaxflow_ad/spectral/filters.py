"""Frequency-domain high-pass filters (FAIR, Liu et al., Sec. 3.2, Eq. 1-6).

Transfer functions are defined on the *centred* spectrum, i.e. after
``fftshift``, where the zero frequency sits at index ``(H // 2, W // 2)``:

* ideal (IHPF, Eq. 2):        ``H = 0 if D <= D0 else 1``
* Gaussian (GHPF, Eq. 3):     ``H = 1 - exp(-D^2 / (2 D0^2))``
* Butterworth (BHPF, Eq. 4):  ``H = 1 / (1 + (D0 / D)^(2n))``

``D(u, v)`` is the Euclidean distance to the centre in frequency-*index*
units, and the cutoff ``D0`` is in the same units, not normalised by the image
size: this is what the official FAIR code does (``d = 30`` at 256x256 input).
At another resolution the same ``D0`` removes a different share of the
spectrum; scale it yourself (e.g. ``30 * size / 256``) if that is what you want.

The official code evaluates ``1 / (1 + (d / (dist + 1e-6)) ** (2 n))`` in
float64. Here the Butterworth response is written as the equivalent
``sigmoid(2 n (log D - log D0))`` so that it never overflows in float32 for any
order; at ``D = 0`` the same ``1e-6`` guard is used, which makes the DC gain
about 0 as in the official code.

Filtering follows the official pipeline: grayscale (``0.299 R + 0.587 G +
0.114 B``, the weights of OpenCV's ``BGR2GRAY``), ``fft2``, multiply by the
transfer function, inverse transform, real part; no re-normalisation, so the
output is roughly zero-mean. ``per_channel=True`` filters every channel instead
(not used by the official code). FFTs run in float32 (complex64), the official
code uses float64; the difference is ~1e-7 relative.

All functions are pure ``jax.numpy`` with static shapes and can be jitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp

FilterKind = Literal["butterworth", "gaussian", "ideal"]

#: Luma weights of OpenCV's ``COLOR_BGR2GRAY`` (ITU-R BT.601), in R, G, B order.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)

_EPS = 1e-6  # the official code's guard against division by zero at D = 0


def frequency_distance(shape: Sequence[int]) -> jax.Array:
    """``D(u, v)``: distance of every bin of a centred ``(H, W)`` spectrum to its centre.

    The centre is ``(H // 2, W // 2)``, where ``jnp.fft.fftshift`` puts the zero
    frequency for even and odd sizes alike. Paper Eq. 2-4 write ``(u - M/2)``,
    which is the same for the even sizes used there.
    """
    h, w = int(shape[0]), int(shape[1])
    u = jnp.arange(h, dtype=jnp.float32) - (h // 2)
    v = jnp.arange(w, dtype=jnp.float32) - (w // 2)
    return jnp.sqrt(u[:, None] ** 2 + v[None, :] ** 2)


def butterworth_highpass(shape: Sequence[int], cutoff: float = 30.0, order: float = 2.0) -> jax.Array:
    """Butterworth high-pass transfer function (paper Eq. 4) on a centred spectrum.

    ``H = 1 / (1 + (D0 / D)^(2 n))``, so ``H(D0) = 1/2``. Default ``D0 = 30``,
    ``n = 2`` (the paper's and the official code's 2-BHPF).
    """
    d = frequency_distance(shape) + _EPS
    return jax.nn.sigmoid(2.0 * order * (jnp.log(d) - jnp.log(jnp.asarray(cutoff, jnp.float32))))


def gaussian_highpass(shape: Sequence[int], cutoff: float = 30.0) -> jax.Array:
    """Gaussian high-pass transfer function (paper Eq. 3): ``1 - exp(-D^2 / (2 D0^2))``.

    Not in the official code (which only has BHPF and Sobel); written from the
    paper for the ablation of its Table 7.
    """
    d = frequency_distance(shape)
    return 1.0 - jnp.exp(-(d**2) / (2.0 * jnp.asarray(cutoff, jnp.float32) ** 2))


def ideal_highpass(shape: Sequence[int], cutoff: float = 30.0) -> jax.Array:
    """Ideal high-pass transfer function (paper Eq. 2): 0 for ``D <= D0``, else 1.

    Not in the official code; written from the paper for its Table 7 ablation.
    """
    d = frequency_distance(shape)
    return (d > cutoff).astype(jnp.float32)


def highpass_transfer(kind: FilterKind, shape: Sequence[int], cutoff: float = 30.0, order: float = 2.0) -> jax.Array:
    """The centred transfer function of one of the three filters, by name."""
    if kind == "butterworth":
        return butterworth_highpass(shape, cutoff, order)
    if kind == "gaussian":
        return gaussian_highpass(shape, cutoff)
    if kind == "ideal":
        return ideal_highpass(shape, cutoff)
    raise ValueError(f"unknown high-pass filter kind {kind!r}; expected 'butterworth', 'gaussian' or 'ideal'")


def apply_centered_transfer(x: jax.Array, transfer: jax.Array) -> jax.Array:
    """Filter real images ``x[..., H, W]`` with a centred transfer function ``[H, W]``.

    Computes ``real(ifft2(ifftshift(fftshift(fft2(x)) * transfer)))`` (paper
    Eq. 5-6); multiplying the unshifted spectrum by ``ifftshift(transfer)`` is
    the same thing with two shifts fewer.
    """
    spectrum = jnp.fft.fft2(x.astype(jnp.float32), axes=(-2, -1))
    filtered = spectrum * jnp.fft.ifftshift(transfer, axes=(-2, -1))
    return jnp.real(jnp.fft.ifft2(filtered, axes=(-2, -1))).astype(jnp.float32)


def rgb_to_gray(images: jax.Array) -> jax.Array:
    """``[..., 3]`` RGB to ``[...]`` luma with OpenCV's BT.601 weights."""
    if images.shape[-1] != 3:
        raise ValueError(f"rgb_to_gray expects 3 channels in the last axis, got shape {images.shape}")
    w = jnp.asarray(GRAY_WEIGHTS, dtype=jnp.float32)
    return jnp.tensordot(images.astype(jnp.float32), w, axes=([-1], [0]))


def highpass_filter(
    images: jax.Array,
    kind: FilterKind = "butterworth",
    cutoff: float = 30.0,
    order: float = 2.0,
    per_channel: bool = False,
) -> jax.Array:
    """High-pass component of NHWC images, as FAIR feeds it to its UNet.

    Args:
      images: ``[B, H, W, C]`` float images (FAIR: RGB in [0, 1]).
      kind: ``"butterworth"``, ``"gaussian"`` or ``"ideal"``.
      cutoff: ``D0`` in frequency-index units (official: 30 at 256x256).
      order: Butterworth order ``n`` (ignored by the other kinds).
      per_channel: filter every channel (output ``[B, H, W, C]``) instead of
        the grayscale image (output ``[B, H, W, 1]``, the official behaviour;
        needs ``C == 3``, or ``C == 1`` which is used as is).

    Returns:
      float32 ``[B, H, W, 1]`` or ``[B, H, W, C]``.
    """
    if images.ndim != 4:
        raise ValueError(f"highpass_filter expects NHWC images, got shape {images.shape}")
    h, w = images.shape[1], images.shape[2]
    transfer = highpass_transfer(kind, (h, w), cutoff, order)
    if per_channel:
        chw = jnp.moveaxis(images.astype(jnp.float32), -1, 1)  # [B, C, H, W]
        return jnp.moveaxis(apply_centered_transfer(chw, transfer), 1, -1)
    gray = images[..., 0].astype(jnp.float32) if images.shape[-1] == 1 else rgb_to_gray(images)
    return apply_centered_transfer(gray, transfer)[..., None]
