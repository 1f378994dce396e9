"""Spectral operations of MASF (Masked Asymmetric Spectral Flow), Sec. 3.3, 3.4 and 3.7.

One function per equation of the paper (``papers/003``; facts and open choices
in ``notes/masf.md``). Feature maps are NHWC ``[B, H, W, C]``; every FFT runs
over the spatial axes ``(1, 2)``.

* SDM (Sec. 3.3): :func:`low_frequency_mask`, :func:`spectral_split`.
* AMFD views (Sec. 3.4): :func:`patch_mask` (35 % of 2x2 patches zeroed),
  :func:`frequency_mask` and :func:`apply_frequency_mask` (25 % of the
  ``rfft2`` coefficients zeroed).
* AMFD training goal (Sec. 3.4, garbled equation read as cosine + 0.5 x
  spectral MSE): :func:`cosine_distance`, :func:`amplitude_mse`,
  :func:`distillation_loss`.
* TTSA (Sec. 3.7): :func:`perturb_phase`, :func:`ttsa_views`.

**Precision.** The paper trained in FP16 and lost whole categories (carpet,
grid) to NaN in the FFT path (Sec. 4, limitation 1). Every function here casts
its inputs up to at least float32 before any FFT, so the spectra are complex64
(complex128 only for float64 inputs with x64 enabled). Functions that return a
feature map return it in the input's dtype through a *saturating* cast: a
value beyond the dtype's finite range (an ideal low-pass or a phase change can
overshoot the input's peak, and float16 stops at 65504) is clipped to that
range instead of becoming ``inf``. Losses are returned in float32. The
guarantee, tested: finite inputs of amplitude up to 1e6 (up to float16's
maximum for float16) give finite outputs and finite gradients.

All functions are pure ``jax.numpy`` with static shapes and can be jitted
(sizes, ratios, ``shape`` and ``n`` are static Python values).
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

MaskShape = Literal["square", "circle"]

_SPATIAL = (1, 2)  # H, W axes of NHWC


def _compute_dtype(dtype) -> jnp.dtype:
    """The real dtype FFTs run in: float32, or float64 for float64 inputs."""
    return jnp.promote_types(dtype, jnp.float32)


def _upcast(x: jax.Array) -> jax.Array:
    """``x`` cast up to at least float32 (float16 / bfloat16 / ints -> float32)."""
    x = jnp.asarray(x)
    return x.astype(_compute_dtype(x.dtype))


def _saturating_cast(y: jax.Array, dtype) -> jax.Array:
    """Cast ``y`` to ``dtype``, clipping to the dtype's finite range first.

    Without the clip a float32 value above 65504 becomes ``inf`` in float16.
    NaN stays NaN (there is none for finite inputs).
    """
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating) or jnp.finfo(dtype).bits >= jnp.finfo(y.dtype).bits:
        return y.astype(dtype)
    fmax = float(jnp.finfo(dtype).max)
    return jnp.clip(y, -fmax, fmax).astype(dtype)


def _count(ratio: float, n: int) -> int:
    """``round(ratio * n)`` with halves rounded up (not Python's banker's rounding)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    return min(n, int(math.floor(ratio * n + 0.5)))


def _sample_keys(key: jax.Array, batch: int) -> jax.Array:
    """Key of sample ``i`` = ``fold_in(key, i)``: independent of the batch size."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))


# --------------------------------------------------------------------------- SDM


def low_frequency_mask(h: int, w: int, ratio: float = 0.3, shape: MaskShape = "square") -> jax.Array:
    """``M_low`` (Sec. 3.3): bool ``[h, w]`` keeping the central ``ratio`` of the spectrum.

    The mask is in the *unshifted* FFT layout of ``jnp.fft.fft2`` (index 0 is
    the zero frequency). Frequencies are the integer ones of ``fftfreq(n) * n``
    (``0, 1, ..., -2, -1``; the Nyquist row of an even size is ``-n/2``).
    "Central ``r`` fraction" is not defined in the paper; here it is a
    *per-axis extent* relative to the half-size (the Nyquist frequency):

    * ``"square"`` (default): ``|f_y| <= r h / 2`` and ``|f_x| <= r w / 2``,
      i.e. the kept band covers about ``r`` of each axis of the centred
      spectrum (area fraction about ``r^2``: 0.09 for ``r = 0.3``).
    * ``"circle"``: normalised radius ``sqrt((f_y / (h/2))^2 + (f_x / (w/2))^2) <= r``
      (area fraction about ``pi r^2 / 4``).

    Both depend on ``|f|`` only, so the mask is symmetric, ``M[k] == M[-k]``
    (indices mod ``h``, ``w``), and the low part of a real signal is real. The
    zero frequency is always kept. At 64x64 and ``r = 0.3`` the square keeps
    ``|f| <= 9``, 19 of 64 frequencies per axis.

    Args:
      h, w: spatial size (static).
      ratio: ``r`` in ``[0, 1]``; ``1`` keeps everything for ``"square"``.
      shape: ``"square"`` or ``"circle"``.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    fy = np.abs(np.fft.fftfreq(h) * h)[:, None]  # exact integers in float64
    fx = np.abs(np.fft.fftfreq(w) * w)[None, :]
    tol = 1e-9  # so that r * n / 2 landing exactly on an integer keeps it
    if shape == "square":
        mask = (fy <= ratio * h / 2 + tol) & (fx <= ratio * w / 2 + tol)
    elif shape == "circle":
        mask = (fy / (h / 2)) ** 2 + (fx / (w / 2)) ** 2 <= ratio**2 + tol
    else:
        raise ValueError(f"unknown mask shape {shape!r}; expected 'square' or 'circle'")
    return jnp.asarray(mask)


def spectral_split(x: jax.Array, ratio: float = 0.3, shape: MaskShape = "square") -> tuple[jax.Array, jax.Array]:
    """SDM decomposition (Sec. 3.3): ``F_low = IFFT2(F M)``, ``F_high = IFFT2(F (1 - M))``.

    ``F = fft2(x, norm="ortho")`` over ``H, W`` of NHWC ``x``; real parts are
    returned (they are exact: ``M`` is symmetric). ``low + high == x`` up to
    float32 rounding. FFTs in complex64; outputs in ``x``'s dtype (saturating
    cast, see the module docstring).

    Returns:
      ``(low, high)``, each ``[B, H, W, C]``.
    """
    if x.ndim != 4:
        raise ValueError(f"spectral_split expects NHWC feature maps, got shape {x.shape}")
    dtype = x.dtype
    h, w = x.shape[1], x.shape[2]
    m = low_frequency_mask(h, w, ratio, shape)[None, :, :, None]
    spec = jnp.fft.fft2(_upcast(x), axes=_SPATIAL, norm="ortho")
    low = jnp.real(jnp.fft.ifft2(jnp.where(m, spec, 0), axes=_SPATIAL, norm="ortho"))
    high = jnp.real(jnp.fft.ifft2(jnp.where(m, 0, spec), axes=_SPATIAL, norm="ortho"))
    return _saturating_cast(low, dtype), _saturating_cast(high, dtype)


# --------------------------------------------------------------------------- AMFD masks


def patch_mask(key: jax.Array, batch: int, h: int, w: int, patch: int = 2, ratio: float = 0.35) -> jax.Array:
    """Spatial view mask of AMFD (Sec. 3.4): bool ``[B, h, w, 1]``, True = kept.

    The map is tiled into ``ceil(h / patch) x ceil(w / patch)`` patches; pixel
    ``(i, j)`` belongs to patch ``(i // patch, j // patch)``, so with an odd
    size the last row/column of patches is partial. Exactly
    ``round(ratio * n_patches)`` patches (halves rounded up) are zeroed per
    sample, a uniformly random set drawn from ``fold_in(key, i)`` for sample
    ``i`` (different per sample, independent of ``batch``, deterministic per
    key). The mask is shared by all channels (trailing axis of size 1).
    """
    ph, pw = -(-h // patch), -(-w // patch)
    n = ph * pw
    k = _count(ratio, n)

    def one(sample_key):
        dropped = jax.random.permutation(sample_key, n) < k  # exactly k True
        grid = dropped.reshape(ph, pw)
        full = jnp.repeat(jnp.repeat(grid, patch, axis=0), patch, axis=1)[:h, :w]
        return ~full

    return jax.vmap(one)(_sample_keys(key, batch))[..., None]


def frequency_mask(key: jax.Array, batch: int, h: int, w: int, ratio: float = 0.25) -> jax.Array:
    """Frequency view mask of AMFD (Sec. 3.4): bool ``[B, h, w // 2 + 1, 1]``, True = kept.

    Exactly ``round(ratio * h * (w // 2 + 1))`` coefficients of the ``rfft2``
    half spectrum (halves rounded up) are dropped per sample, uniformly at
    random from ``fold_in(key, i)`` for sample ``i``, shared by all channels.
    The paper says only "randomly taken" coefficients: any coefficient may be
    dropped, the zero frequency included, and on the self-conjugate columns
    (0, and ``w / 2`` for even ``w``) a coefficient may be dropped without its
    conjugate partner; ``irfft2`` still returns a real map.
    """
    wf = w // 2 + 1
    n = h * wf
    k = _count(ratio, n)

    def one(sample_key):
        return (jax.random.permutation(sample_key, n) >= k).reshape(h, wf)

    return jax.vmap(one)(_sample_keys(key, batch))[..., None]


def apply_frequency_mask(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Frequency-masked view: ``irfft2(rfft2(x, ortho) * mask, s=(H, W), ortho)``.

    Args:
      x: ``[B, H, W, C]``.
      mask: bool (or 0/1) broadcastable to ``[B, H, W // 2 + 1, C]``, e.g. from
        :func:`frequency_mask`.

    Returns:
      ``[B, H, W, C]`` in ``x``'s dtype (FFTs in complex64, saturating cast).
    """
    if x.ndim != 4:
        raise ValueError(f"apply_frequency_mask expects NHWC feature maps, got shape {x.shape}")
    h, w = x.shape[1], x.shape[2]
    spec = jnp.fft.rfft2(_upcast(x), axes=_SPATIAL, norm="ortho")
    spec = jnp.where(jnp.asarray(mask).astype(bool), spec, 0)
    out = jnp.fft.irfft2(spec, s=(h, w), axes=_SPATIAL, norm="ortho")
    return _saturating_cast(out, x.dtype)


# --------------------------------------------------------------------------- TTSA


def hermitian_phase_noise(key: jax.Array, h: int, w: int, c: int, sigma: float = 0.1) -> jax.Array:
    """Phase noise ``eps ~ N(0, sigma^2)`` of shape ``[h, w // 2 + 1, c]`` for an ``rfft2`` spectrum.

    On the self-conjugate columns of ``rfft2`` (column 0, and ``w / 2`` for
    even ``w``) rows ``k`` and ``-k`` hold conjugate coefficients, so a phase
    change that keeps the full spectrum's amplitude (and a real signal real)
    must be antisymmetric there: ``eps[-k] = -eps[k]``, with ``eps = 0`` at the
    self-conjugate points (rows 0 and ``h / 2`` for even ``h``). The rows
    ``1 .. ceil(h/2) - 1`` keep their draw and the mirrored rows take its
    negative, so every non-fixed coefficient still has variance ``sigma^2``.
    Otherwise ``irfft2`` would silently project the perturbed spectrum back
    onto a Hermitian one and change its amplitude.
    """
    wf = w // 2 + 1
    eps = sigma * jax.random.normal(key, (h, wf, c), jnp.float32)
    rows = np.arange(h)
    mirror = (-rows) % h
    sign = np.where(rows < mirror, 1.0, np.where(rows > mirror, -1.0, 0.0)).astype(np.float32)
    source = np.minimum(rows, mirror)  # the "positive" row whose draw is used
    conj_cols = [0] + ([w // 2] if w % 2 == 0 else [])
    sym = eps[source] * sign[:, None, None]  # antisymmetric in the row index
    is_conj_col = np.zeros((wf,), bool)
    is_conj_col[conj_cols] = True
    return jnp.where(is_conj_col[None, :, None], sym, eps)


def perturb_phase(x: jax.Array, key: jax.Array, sigma: float = 0.1) -> jax.Array:
    """One TTSA view (Sec. 3.7): amplitude spectrum kept, phase perturbed by ``eps ~ N(0, sigma^2)``.

    Per sample and channel, ``X = rfft2(x)`` and
    ``X' = |X| exp(i (angle(X) + eps)) = X exp(i eps)`` (the second form is the
    same number without ``angle``, so no ill-defined phase of zero coefficients
    and no NaN gradient); returns ``irfft2(X', s=(H, W))``. The paper's
    ``|FFT(x)| + exp(i phi)`` is read as a product (the "+" is an extraction
    artefact: only the product keeps the amplitude, as the text says). ``eps``
    follows :func:`hermitian_phase_noise`, so ``|fft2(out)| == |fft2(x)|`` up
    to rounding.

    Noise rule: sample ``i`` of the batch draws its ``eps`` from
    ``fold_in(key, i)``, so a sample's view depends on ``key``, its index and
    ``x[i]`` only, not on the batch size. ``sigma = 0`` returns ``x``.

    Args:
      x: ``[B, H, W, C]``, any float dtype (FFTs in complex64).
      key: PRNG key.
      sigma: standard deviation of the phase noise in radians.

    Returns:
      ``[B, H, W, C]`` in ``x``'s dtype (saturating cast).
    """
    if x.ndim != 4:
        raise ValueError(f"perturb_phase expects NHWC feature maps, got shape {x.shape}")
    b, h, w, c = x.shape
    spec = jnp.fft.rfft2(_upcast(x), axes=_SPATIAL, norm="ortho")
    eps = jax.vmap(lambda k: hermitian_phase_noise(k, h, w, c, sigma))(_sample_keys(key, b))
    rotated = spec * jax.lax.complex(jnp.cos(eps), jnp.sin(eps)).astype(spec.dtype)
    out = jnp.fft.irfft2(rotated, s=(h, w), axes=_SPATIAL, norm="ortho")
    return _saturating_cast(out, x.dtype)


def ttsa_views(x: jax.Array, key: jax.Array, n: int = 5, sigma: float = 0.1) -> jax.Array:
    """``n`` TTSA views of ``x`` (Sec. 3.7, ``n = 5``): ``[n, B, H, W, C]``.

    View ``j`` is ``perturb_phase(x, fold_in(key, j), sigma)``; predictions
    on the views are averaged by the caller.
    """
    view_keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(n))
    return jax.vmap(lambda k: perturb_phase(x, k, sigma))(view_keys)


# --------------------------------------------------------------------------- losses


def cosine_distance(s: jax.Array, t: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``1 - cos(s, t)`` over channels: float32 ``[B, H, W]`` (AMFD spatial term, RD's score).

    ``cos = <s, t> / (max(|s|, eps) max(|t|, eps))``, computed in float32 (so
    float16 inputs at 1e4..6e4 do not overflow the squared norms). The norms
    are ``sqrt(max(|s|^2, eps^2))`` so that the gradient at a zero vector is
    finite (zero).
    """
    s32, t32 = _upcast(s), _upcast(t)
    dot = jnp.sum(s32 * t32, axis=-1)
    ns = jnp.sqrt(jnp.maximum(jnp.sum(s32 * s32, axis=-1), eps**2))
    nt = jnp.sqrt(jnp.maximum(jnp.sum(t32 * t32, axis=-1), eps**2))
    return (1.0 - dot / (ns * nt)).astype(jnp.float32)


def _amplitude(x: jax.Array) -> jax.Array:
    """``|rfft2(x, ortho)|`` over ``H, W`` (complex64 spectrum), ``[B, H, W // 2 + 1, C]``."""
    return jnp.abs(jnp.fft.rfft2(_upcast(x), axes=_SPATIAL, norm="ortho"))


def amplitude_mse(s: jax.Array, t: jax.Array) -> jax.Array:
    """Spectral-consistency term (Sec. 3.4): ``mean((|fft2(s)| - |fft2(t)|)^2)``, float32 scalar.

    Orthonormal ``fft2`` over ``H, W``, the mean over all of ``[B, H, W, C]``.
    The amplitude of a real map's full spectrum is symmetric, so the sum runs
    over the ``rfft2`` half with every column weighted by how often it occurs
    in the full spectrum (as :func:`jaxflow_ad.spectral.fourier_loss.mean_abs_fft2`);
    the result is the full-spectrum mean. Gradients flow into both arguments:
    stop the teacher's yourself.
    """
    if s.shape != t.shape or s.ndim != 4:
        raise ValueError(f"amplitude_mse expects two NHWC maps of one shape, got {s.shape} and {t.shape}")
    w = s.shape[2]
    diff2 = (_amplitude(s) - _amplitude(t)) ** 2  # [B, H, W//2+1, C]
    weights = np.full((w // 2 + 1,), 2.0, np.float32)
    weights[0] = 1.0
    if w % 2 == 0:
        weights[-1] = 1.0  # the Nyquist column occurs once
    total = jnp.sum(diff2 * jnp.asarray(weights)[None, None, :, None])
    return (total / s.size).astype(jnp.float32)


def distillation_loss(
    s: jax.Array, t: jax.Array, spectral_weight: float = 0.5
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """AMFD training goal (Sec. 3.4): ``mean(1 - cos(s, t)) + spectral_weight * amplitude_mse(s, t)``.

    The paper's garbled equation reads as cosine distillation + 0.5 x the MSE of
    the FFT amplitudes (``notes/masf.md``). ``s`` is the student's
    reconstruction, ``t`` the teacher's features, both ``[B, H, W, C]``.

    Returns:
      ``(loss, {"cos": ..., "spectral": ...})``, float32 scalars.
    """
    cos = jnp.mean(cosine_distance(s, t))
    spectral = amplitude_mse(s, t)
    return cos + spectral_weight * spectral, {"cos": cos, "spectral": spectral}
