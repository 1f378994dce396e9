"""Global (FFT) filters of real NHWC maps: GFNet / DFFormer's global filter and the dynamic filter bank
mixing of MADFlow's FSE.

GFNet (Rao et al., NeurIPS 2021, Eq. 3-4) and DFFormer's ``DynamicFilter`` (Tatsunami and Taki,
2024) filter a feature map by ``irfft2(rfft2(x) * W)`` with a learned half-spectrum ``W``;
MADFlow's ``DynamicFSFilter`` (paper Eq. 11-12) mixes ``N`` such filters per sample and channel
with softmax routing weights. Both transforms use ``norm="ortho"``.

Relation to convolution (used by the tests and :func:`filter_kernel`). With ``F`` the
unnormalised DFT, the ortho forward transform is ``F x / sqrt(HW)`` and the ortho inverse is
``sqrt(HW) F^{-1}``, where ``F^{-1}`` is the default (``"backward"``) inverse carrying ``1/HW``.
So ``global_filter(x, W) = F^{-1}(F x * W)``: the two ``sqrt(HW)`` factors cancel and the
result is the circular convolution ``x (*) k`` with ``k = irfft2(W, s=(H, W), norm="backward")
= irfft2(W, norm="ortho") / sqrt(HW)``, for every complex ``W``.

Which part of ``W`` matters: a real-to-complex half spectrum has self-conjugate columns, column
``v = 0`` and, for even ``W``, the Nyquist column ``v = W / 2``, on which a real signal's
spectrum is Hermitian along ``u`` (``X[-u, v] = conj X[u, v]``). ``irfft2`` keeps only the
Hermitian part ``(W[u, v] + conj W[-u, v]) / 2`` of those columns (the imaginary parts of the
DC and Nyquist bins, and the anti-Hermitian part along ``u``, are lost), both for the filtered
map and for ``k``; the other columns are used as they are. So the identity above holds for any
complex weight, and ``rfft2(k, norm="backward")`` equals ``W`` with those columns projected on
their Hermitian part.

All functions are pure ``jax.numpy`` and can be jitted; FFTs run in complex64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_AXES = (1, 2)


def global_filter(x: jax.Array, weight: jax.Array) -> jax.Array:
    """``irfft2(rfft2(x, norm="ortho") * weight, s=(H, W), norm="ortho")`` over axes 1, 2.

    Args:
      x: real ``[B, H, W, C]``.
      weight: complex ``[B or 1, H, W // 2 + 1, C]`` half-spectrum filter (broadcast over the
        batch when its first axis is 1).

    Returns:
      float32 ``[B, H, W, C]``, the circular convolution of ``x`` with
      ``filter_kernel(weight, (H, W))`` (module docstring).
    """
    _, h, w, _ = x.shape
    if weight.ndim != 4 or weight.shape[1:3] != (h, w // 2 + 1):
        raise ValueError(
            f"global_filter: a {h}x{w} map needs a [B, {h}, {w // 2 + 1}, C] half-spectrum weight, "
            f"got shape {weight.shape}"
        )
    spec = jnp.fft.rfft2(x.astype(jnp.float32), axes=_AXES, norm="ortho")
    return jnp.fft.irfft2(spec * weight.astype(jnp.complex64), s=(h, w), axes=_AXES, norm="ortho")


def mix_filter_bank(bank: jax.Array, routing: jax.Array) -> jax.Array:
    """Per-sample, per-channel mixture of a filter bank (MADFlow Eq. 11; DFFormer's routing).

    ``weight[b, u, v, c] = sum_n routing[b, n, c] * bank[u, v, n]``.

    Args:
      bank: ``[U, V, N]`` filters (complex half spectra, or real spatial maps).
      routing: real ``[B, N, C]`` mixing weights (softmax over ``N`` in MADFlow).

    Returns:
      ``[B, U, V, C]`` in the bank's dtype (complex64 for a complex bank).
    """
    if bank.ndim != 3 or routing.ndim != 3 or bank.shape[2] != routing.shape[1]:
        raise ValueError(
            f"mix_filter_bank needs bank [U, V, N] and routing [B, N, C] with the same N, "
            f"got {bank.shape} and {routing.shape}"
        )
    dtype = jnp.result_type(bank.dtype, jnp.float32)
    return jnp.einsum("uvn,bnc->buvc", bank.astype(dtype), routing.astype(dtype), precision=jax.lax.Precision.HIGHEST)


def filter_kernel(weight: jax.Array, size: tuple[int, int]) -> jax.Array:
    """The spatial kernel ``k [B, H, W, C]`` with ``global_filter(x, weight) == x (*) k`` (circular).

    ``k = irfft2(weight, s=size, norm="ortho") / sqrt(H W)``, i.e. ``irfft2`` with the default
    ``"backward"`` norm (derivation in the module docstring); circular convolution means
    ``y[h, w] = sum_{a, b} k[a, b] x[(h - a) mod H, (w - b) mod W]``.
    """
    h, w = int(size[0]), int(size[1])
    if weight.shape[-3:-1] != (h, w // 2 + 1):
        raise ValueError(f"filter_kernel: size {h}x{w} needs weight [..., {h}, {w // 2 + 1}, C], got {weight.shape}")
    k = jnp.fft.irfft2(weight.astype(jnp.complex64), s=(h, w), axes=(-3, -2), norm="ortho")
    return k / jnp.float32(math.sqrt(h * w))
