"""2-D convolution with faster gradients on XLA:CPU, a tiled FFT convolution, and
a polyphase convolution of nearest-upsampled inputs.

Why: on XLA:CPU (jax 0.10) the weight gradient of a convolution
("backprop-filter") runs 6-10x slower than the forward convolution of the same
size. For ``x [2,256,256,32]``, ``w [7,7,32,32]`` (2 busy cores): forward
0.22 s, input gradient 0.23 s, weight gradient 1.8-2.4 s. PyramidFlow's
training step is dominated by it.

:func:`conv2d` with ``impl="im2col"`` is a ``jax.custom_vjp`` whose forward and
input gradient are ``lax.conv_general_dilated`` (and its autodiff), and whose
weight gradient is computed as a sum of matrix products ``P_r^T @ dy_r`` over
blocks ``r`` of output rows, where ``P_r`` (``[rows*W, kh*kw*I]``) is the
im2col matrix of the block, built by slicing the padded input (a
``lax.scan`` over blocks keeps memory at one block). Same function; the
weight gradient differs from XLA's by float rounding only (relative ~5e-6 at
131k summands, measured against an exact-ish float64 reference it is as
accurate). Measured on the shape above: 0.64 s vs 1.8-2.4 s.

``impl="fft"`` and ``impl="fft_grad"`` evaluate the conv directly when it is
not differentiated (XLA:CPU runs it through YNNPACK near the machine's peak,
~170 GFLOP/s on 2 idle cores; inference) and take the gradients from the
autodiff of :func:`conv2d_fft`, an overlap-save FFT convolution on 32x32 tiles
whose work per output pixel is ~10x smaller than the direct 7x7 one. Idle
2-core timings, value and both gradients of ``x [2,256,256,32]``,
``w [7,7,32,32]``: xla 0.49 s, im2col 0.37 s, fft 0.15-0.18 s; at 128x128:
0.095 / 0.121 / 0.040 s. They differ in the forward of a differentiated conv:

* ``fft``: the FFT conv itself, keeping the input and kernel spectra for the
  backward pass (its FFT forward, 0.09 s, is slower than the direct one,
  0.073 s, but the backward pass no longer transforms the input). The D=4
  PyramidFlow training step: 2.16 -> 1.95 s. Values differ from the direct
  conv's by float rounding (~2e-6 relative).
* ``fft_grad``: the direct forward, the spectra recomputed in the backward
  pass. Best under reversible backprop, where each layer's forward is re-run
  next to its inverse on the same inputs and XLA computes the two direct convs
  once (D=4 reversible step 2.66 s; ``fft`` there: 3.06 s).

:func:`conv2d_nearest_up2` computes ``conv2d(nearest_up2(x), w)`` (stride 1,
'same' padding ``k//2``) without forming the upsampled input: each of the four
output phases is a convolution of the half-resolution input with a kernel of
``ceil(k/2)`` or so taps per axis whose weights are sums of the original taps
(for k=7: four 4x4 kernels). 3x fewer multiply-adds for k=7; same function up
to float rounding.

Layouts: NHWC inputs, HWIO kernels, no bias.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

IMPLS = ("auto", "xla", "im2col", "fft", "fft_grad")
_DN = ("NHWC", "HWIO", "NHWC")
# Rows of the im2col block (batch * rows * width) aimed for in the weight gradient.
_BLOCK_PIXELS = 8192


def _xla_conv(x, w, stride, padding):
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_DN)


def _out_size(n: int, k: int, stride: int) -> int:
    return (n - k) // stride + 1


def weight_grad_im2col(
    x: jax.Array,
    dy: jax.Array,
    ksize: tuple[int, int],
    stride: int,
    padding: Sequence[tuple[int, int]],
    block_pixels: int = _BLOCK_PIXELS,
) -> jax.Array:
    """``d/dw`` of ``sum(dy * conv(x, w))``: ``dw[u,v,i,o] = sum_{b,h,w} xpad[b, s*h+u, s*w+v, i] dy[b,h,w,o]``.

    Computed as a ``lax.scan`` over blocks of ``R`` output rows of
    ``P^T @ dy_block`` with ``P`` the block's im2col matrix (sliced, not a conv).
    """
    kh, kw = ksize
    b, _, _, c_in = x.shape
    _, ho, wo, c_out = dy.shape
    s = stride
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    rows = max(1, min(ho, block_pixels // max(1, b * wo)))
    n_blocks = -(-ho // rows)
    ho_pad = n_blocks * rows
    if ho_pad != ho:  # zero rows of dy add nothing; give them input rows too
        dy = jnp.pad(dy, ((0, 0), (0, ho_pad - ho), (0, 0), (0, 0)))
    need_rows = s * (ho_pad - 1) + kh
    if xp.shape[1] < need_rows:
        xp = jnp.pad(xp, ((0, 0), (0, need_rows - xp.shape[1]), (0, 0), (0, 0)))
    span = s * (rows - 1) + 1

    def body(acc, blk):
        h0 = blk * rows
        cols = []
        for u in range(kh):
            band = lax.dynamic_slice_in_dim(xp, s * h0 + u, span, axis=1)[:, ::s]
            for v in range(kw):
                cols.append(band[:, :, v : v + s * (wo - 1) + 1 : s, :])
        patches = jnp.concatenate(cols, axis=-1).reshape(-1, kh * kw * c_in)
        d = lax.dynamic_slice_in_dim(dy, h0, rows, axis=1).reshape(-1, c_out)
        return acc + jnp.dot(patches.T, d, precision=lax.Precision.HIGHEST), None

    acc0 = jnp.zeros((kh * kw * c_in, c_out), jnp.promote_types(x.dtype, dy.dtype))
    acc, _ = lax.scan(body, acc0, jnp.arange(n_blocks))
    return acc.reshape(kh, kw, c_in, c_out).astype(x.dtype)


# The custom-VJP convs below evaluate the direct conv when not differentiated;
# they differ in how they differentiate it.
_conv_im2col = jax.custom_vjp(_xla_conv, nondiff_argnums=(2, 3))


def _direct_fwd(x, w, stride, padding):
    return _xla_conv(x, w, stride, padding), (x, w)  # direct forward; the backward works from (x, w)


def _conv_im2col_bwd(stride, padding, res, dy):
    x, w = res
    _, vjp_x = jax.vjp(lambda a: _xla_conv(a, w, stride, padding), x)
    (dx,) = vjp_x(dy)
    dw = weight_grad_im2col(x, dy, w.shape[:2], stride, padding).astype(w.dtype)
    return dx, dw


_conv_im2col.defvjp(_direct_fwd, _conv_im2col_bwd)


# Tile sizes tried by :func:`fft_tile_size` (FFT lengths with small prime factors).
_FFT_TILES = (8, 10, 12, 16, 18, 20, 22, 24, 28, 32, 36, 40, 48)


def fft_tile_size(n_out: int, k: int) -> int:
    """Overlap-save tile length for ``n_out`` outputs of a ``k``-tap kernel along one axis.

    Each tile of length ``T`` yields ``S = T - k + 1`` outputs; the cost model
    ``ceil(n_out / S) * T * (log2 T + 2)`` (tile data times FFT work plus the
    per-frequency product) was fitted to timings on these CPUs: 32 for 128 and
    256 outputs with k=7, 22 for 64.
    """
    cands = [t for t in _FFT_TILES if t >= 2 * k - 1] or [2 * k - 1]
    return min(cands, key=lambda t: (-(-n_out // (t - k + 1))) * t * (np.log2(t) + 2))


def _overlapping_tiles(x: jax.Array, axis: int, n: int, step: int, length: int) -> jax.Array:
    """``[.., L, ..] -> [.., n, length, ..]`` windows ``x[i*step : i*step + length]`` along ``axis``.

    Built from two reshapes (the ``step``-long bodies and the following
    ``length - step`` samples), so no gather; needs ``L >= (n+1)*step`` and
    ``length - step <= step``.
    """
    shape = x.shape
    body = lax.slice_in_dim(x, 0, n * step, axis=axis).reshape(shape[:axis] + (n, step) + shape[axis + 1 :])
    nxt = lax.slice_in_dim(x, step, (n + 1) * step, axis=axis).reshape(shape[:axis] + (n, step) + shape[axis + 1 :])
    nxt = lax.slice_in_dim(nxt, 0, length - step, axis=axis + 1)
    return jnp.concatenate([body, nxt], axis=axis + 1)


def conv2d_fft(x: jax.Array, w: jax.Array, padding="SAME", tiles: tuple[int, int] | None = None) -> jax.Array:
    """Stride-1 NHWC x HWIO cross-correlation by overlap-save FFT over tiles (``jnp.fft``).

    The zero-padded input is cut into overlapping ``Th x Tw`` tiles with step
    ``S = T - k + 1``; on each tile the circular correlation
    ``irfft2(rfft2(tile) * conj(rfft2(w_padded)))`` equals the linear one on its
    first ``S x S`` outputs, which are kept and laid back side by side. The
    channel mixing is one matrix product per frequency, in real arithmetic:
    ``[Re X, Im X] @ [[Re W, Im W], [-Im W, Re W]]`` as a batched matmul with the
    frequency as the leading batch axis (XLA:CPU runs a complex ``dot`` through a
    slower generic path; the real form cut value+gradients of a
    ``[2,256,256,32]`` 7x7 conv from 0.172 to 0.150 s, the D=4 training step
    from 2.29 to 2.21 s). Same function as
    ``lax.conv`` up to float rounding (~2e-6 relative); a pure function,
    differentiable by autodiff (the transposes of FFTs are FFTs).
    """
    kh, kw = w.shape[:2]
    (plo, phi), (qlo, qhi) = _norm_padding(padding, (kh, kw))
    if min(plo, phi, qlo, qhi) < 0:
        raise ValueError(f"conv2d_fft needs non-negative padding, got {padding}")
    b, h, wd, ci = x.shape
    co = w.shape[-1]
    ho, wo = h + plo + phi - kh + 1, wd + qlo + qhi - kw + 1
    th, tw = tiles or (fft_tile_size(ho, kh), fft_tile_size(wo, kw))
    sh, sw = th - kh + 1, tw - kw + 1
    if sh < kh - 1 or sw < kw - 1:
        raise ValueError(f"tile {th}x{tw} too small for a {kh}x{kw} kernel (need T >= 2k-1)")
    nh, nw = -(-ho // sh), -(-wo // sw)
    xp = jnp.pad(x, ((0, 0), (plo, (nh + 1) * sh - h - plo), (qlo, (nw + 1) * sw - wd - qlo), (0, 0)))
    t = _overlapping_tiles(_overlapping_tiles(xp, 1, nh, sh, th), 3, nw, sw, tw)  # B nh Th nw Tw I
    r, nf = b * nh * nw, th * (tw // 2 + 1)
    t = t.transpose(0, 1, 3, 5, 2, 4).reshape(r * ci, th, tw)
    xf = jnp.fft.rfft2(t).reshape(r, ci, nf)
    xf = jnp.concatenate([xf.real, xf.imag], axis=1).transpose(2, 0, 1)  # [F, R, 2I] real
    wk = jnp.pad(w.transpose(2, 3, 0, 1), ((0, 0), (0, 0), (0, th - kh), (0, tw - kw))).reshape(ci * co, th, tw)
    wf = jnp.conj(jnp.fft.rfft2(wk)).reshape(ci, co, nf).transpose(2, 0, 1)  # [F, I, O] complex
    wb = jnp.concatenate(
        [jnp.concatenate([wf.real, wf.imag], axis=2), jnp.concatenate([-wf.imag, wf.real], axis=2)], axis=1
    )  # [F, 2I, 2O] real
    yf = lax.dot_general(xf, wb, (((2,), (1,)), ((0,), (0,))), precision=lax.Precision.HIGHEST)
    yf = lax.complex(yf[..., :co], yf[..., co:]).transpose(1, 2, 0).reshape(r * co, th, tw // 2 + 1)
    y = jnp.fft.irfft2(yf, s=(th, tw))[:, :sh, :sw].reshape(b, nh, nw, co, sh, sw)
    y = y.transpose(0, 1, 4, 2, 5, 3).reshape(b, nh * sh, nw * sw, co)
    return y[:, :ho, :wo].astype(x.dtype)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _conv_fft_strided(x, w, stride, padding):
    """:func:`conv2d_fft` with a stride: the stride-1 result at every ``stride``-th pixel.

    Jitted (the same program once inlined): its differentiation is traced once per shape, not once
    per conv (with the linearisation below, PyramidFlow's quick-start step traces in 0.68 s instead
    of 0.85 s, and computes bitwise the same)."""
    y = conv2d_fft(x, w, padding)
    return y[:, ::stride, ::stride] if stride != 1 else y


_conv_fft = jax.custom_vjp(_xla_conv, nondiff_argnums=(2, 3))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _conv_fft_linearized(x, w, stride, padding):
    return jax.vjp(lambda a, b: _conv_fft_strided(a, b, stride, padding), x, w)


@jax.jit
def _apply_vjp(vjp, dy):
    return vjp(dy)


def _conv_fft_fwd(x, w, stride, padding):
    # Differentiated: the FFT conv, its linearisation (input and kernel spectra) kept as residuals.
    # Both halves jitted: traced once per shape rather than once per conv (the same program inlined)
    return _conv_fft_linearized(x, w, stride, padding)


def _conv_fft_bwd(stride, padding, vjp, dy):
    return _apply_vjp(vjp, dy)


_conv_fft.defvjp(_conv_fft_fwd, _conv_fft_bwd)


_conv_fft_grad = jax.custom_vjp(_xla_conv, nondiff_argnums=(2, 3))


def _conv_fft_grad_bwd(stride, padding, res, dy):
    x, w = res
    _, vjp = jax.vjp(lambda a, b: _conv_fft_strided(a, b, stride, padding), x, w)
    return vjp(dy)


_conv_fft_grad.defvjp(_direct_fwd, _conv_fft_grad_bwd)


def _norm_padding(padding, ksize):
    if isinstance(padding, str):
        if padding.upper() != "SAME":
            raise ValueError(f"padding {padding!r}: use 'SAME' or explicit ((lo, hi), (lo, hi))")
        return tuple((k // 2, k // 2) for k in ksize)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def resolve_impl(impl: str, backend: str | None = None, reversible: bool = False) -> str:
    """``"auto"`` -> on CPU ``"fft"``, or ``"fft_grad"`` under reversible backprop
    (XLA:CPU's own weight gradient is 6-10x slower than its forward conv);
    ``"xla"`` elsewhere (cuDNN's gradients are fast: the PyramidFlow D=4 step on
    an H100 takes 10 ms with ``xla``, 13 ms with FFT gradients). Other names
    pass through; the backend is the default one at trace time."""
    if impl != "auto":
        return impl
    if (backend or jax.default_backend()) != "cpu":
        return "xla"
    return "fft_grad" if reversible else "fft"


def conv2d(x: jax.Array, w: jax.Array, stride: int = 1, padding="SAME", impl: str = "xla") -> jax.Array:
    """NHWC x HWIO convolution (cross-correlation, no bias), explicit padding.

    ``impl="xla"``: ``lax.conv_general_dilated`` and its autodiff.
    ``impl="im2col"``: same forward and input gradient; the weight gradient is
    :func:`weight_grad_im2col`.
    ``impl="fft"``: same value when not differentiated; differentiated, the
    FFT conv :func:`conv2d_fft` and its autodiff.
    ``impl="fft_grad"``: same forward; both gradients are the autodiff of
    :func:`conv2d_fft` (a strided conv is the stride-1 one, subsampled; alone,
    PyramidFlow's strided conv differentiates faster with ``xla``, 9 vs 16 ms,
    but in the training step FFT is as fast or faster, and under reversible
    backprop XLA's took the D=4 step from 2.7 to 3.3 s).
    ``impl="auto"``: :func:`resolve_impl`, the fastest measured on the backend.
    ``padding="SAME"`` means ``k//2`` on each side.
    """
    pad = _norm_padding(padding, w.shape[:2])
    impl = resolve_impl(impl)
    if impl == "xla":
        return _xla_conv(x, w, stride, pad)
    if impl == "im2col":
        return _conv_im2col(x, w, int(stride), pad)
    if impl == "fft":
        return _conv_fft(x, w, int(stride), pad)
    if impl == "fft_grad":
        return _conv_fft_grad(x, w, int(stride), pad)
    raise ValueError(f"unknown conv impl {impl!r}; use one of {IMPLS} (config key model.conv_impl)")


def _phase_matrices(k: int, pad: int):
    """0/1 matrices ``[2(phase), n_taps, k]`` grouping the taps of a k-tap 1-D kernel
    applied to a x2 nearest-upsampled signal, per output phase, on the union of
    the coarse offsets of both phases; and the coarse padding ``(lo, hi)``."""
    coarse = [[(a + u - pad) // 2 for u in range(k)] for a in (0, 1)]  # floor division
    lo = min(min(c) for c in coarse)
    hi = max(max(c) for c in coarse)
    m = np.zeros((2, hi - lo + 1, k), np.float32)
    for a in (0, 1):
        for u, c in enumerate(coarse[a]):
            m[a, c - lo, u] = 1.0
    return m, (-lo, hi)


def conv2d_nearest_up2(x: jax.Array, w: jax.Array, impl: str = "xla") -> jax.Array:
    """``conv2d(nearest_up2(x), w, stride 1, padding k//2)`` computed at x's resolution.

    Output pixel ``(2i+a, 2j+c)`` only sees coarse pixels ``i + floor((a+u-p)/2)``,
    so phase ``(a, c)`` is a convolution of ``x`` with the kernel whose taps are
    the sums of the original taps mapping to the same coarse offset; zero padding
    of the fine grid corresponds to zero padding of the coarse grid. The four
    phase kernels (4x4 each for k=7) are laid side by side on the union of their
    offsets (5x5 for k=7) as one convolution with ``4*O`` outputs, which runs
    faster on CPU than four thin ones and shares one input spectrum under
    ``impl="fft"``.
    """
    kh, kw = w.shape[:2]
    b, h, wd, _ = x.shape
    ma, pad_h = _phase_matrices(kh, kh // 2)
    mc, pad_w = _phase_matrices(kw, kw // 2)
    wp = jnp.einsum("amu,cnv,uvio->mniaco", ma, mc, w, precision=lax.Precision.HIGHEST)
    wp = wp.reshape(wp.shape[:3] + (4 * w.shape[-1],))
    y = conv2d(x, wp, 1, (pad_h, pad_w), impl)  # [B, H, W, 2(a)*2(c)*O]
    y = y.reshape(b, h, wd, 2, 2, w.shape[-1]).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, 2 * h, 2 * wd, w.shape[-1])


class Conv2D(nn.Module):
    """Bias-free NHWC conv with a ``kernel`` parameter laid out like ``flax.linen.Conv``'s
    (``[kh, kw, in, out]``, same name and init call, so parameter trees and
    initial values are identical to ``nn.Conv(..., use_bias=False)``).

    ``upsample=True`` in ``__call__`` convolves ``nearest_up2(x)`` through
    :func:`conv2d_nearest_up2` (stride 1, 'same' padding only).
    """

    features: int
    ksize: int
    stride: int = 1
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, upsample: bool = False) -> jax.Array:
        k = self.ksize
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
        if upsample:
            if self.stride != 1:
                raise ValueError("conv of an upsampled input supports stride 1 only")
            return conv2d_nearest_up2(x, kernel, self.impl)
        return conv2d(x, kernel, self.stride, "SAME", self.impl)
