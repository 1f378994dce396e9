"""Modulated deformable convolution (DCNv2; Zhu et al., "Deformable ConvNets v2", CVPR 2019).

A ``k x k`` convolution whose taps are moved per output pixel by learned
fractional offsets and scaled by learned modulation scalars (Zhu et al. 2019,
Eq. 3)::

    y(p) = sum_t W_t * m_t(p) * x(p + p_t + dp_t(p))

with ``p_t`` the fixed grid of tap ``t``, ``dp_t(p)`` its offset and
``m_t(p)`` in ``[0, 1]`` its modulation (DCNv1, Dai et al. 2017, is the case
``m = 1``). ``x`` is read at fractional positions by bilinear interpolation
with zero outside the image: each of the four integer corners around a
position adds its bilinear weight times its value only if it lies inside the
image (the rule of torchvision's ``deform_conv2d``). The zero-pad-then-clamp
formulation of the pure-PyTorch DCN that MADFlow's FSE spatial-routing branch
uses gives the same values whenever its padding is at least 1.

* :func:`deform_conv2d` is the pure function: gather the four corners of every
  tap, blend them, then one matmul with the kernel.
* :class:`DeformConv2d` is the layer: an offset conv and a mask conv (both
  zero-initialised kernels) predict ``dp`` and ``m`` from the input.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflow_ad.flows.coupling import torch_default_bias_init, torch_default_kernel_init


def deform_conv2d(
    x: jax.Array,
    offset: jax.Array,
    mask: jax.Array | None,
    kernel: jax.Array,
    *,
    padding: int = 1,
    dilation: int = 1,
) -> jax.Array:
    """Modulated deformable 2-D convolution, stride 1, NHWC, no bias.

    ``y(p) = sum_t W_t * m_t(p) * x(p - padding + dilation * (i_t, j_t) + dp_t(p))``
    (DCNv2, Zhu et al. 2019, Eq. 3), summed over the ``K = k * k`` taps, with
    ``x`` sampled bilinearly and zero outside ``[0, H-1] x [0, W-1]`` corner by
    corner (torchvision ``deform_conv2d`` semantics).

    Args:
      x: ``[B, H, W, Cin]`` input.
      offset: ``[B, Ho, Wo, 2K]`` offsets in pixels. Tap ``t = i * k + j``
        (row-major over the kernel, ``i`` the kernel row) sits at
        ``(i * dilation - padding, j * dilation - padding)`` from the output
        pixel. Channels ``0 .. K-1`` are the row (``dy``, down positive)
        offsets of taps ``0 .. K-1``; channels ``K .. 2K-1`` are the column
        (``dx``, right positive) offsets of the same taps: first all ``K``
        rows, then all ``K`` columns (MADFlow's layout; not the interleaved
        ``(dy0, dx0, dy1, dx1, ...)`` layout of torchvision).
      mask: ``[B, Ho, Wo, K]`` modulation of each tap, used as given (the
        layer passes it through a sigmoid), or ``None`` for all ones (DCNv1).
      kernel: ``[k, k, Cin, Cout]`` weights (flax HWIO); ``W_t = kernel[i, j]``.
      padding: implicit zero padding on every side.
      dilation: spacing of the taps.

    Returns:
      ``[B, Ho, Wo, Cout]`` with ``Ho = H + 2 * padding - dilation * (k - 1)``
      (and ``Wo`` alike); ``H x W`` for odd ``k`` and
      ``padding = dilation * (k - 1) // 2``.

    Jittable and differentiable in all four arrays; the gradient with respect
    to the offsets comes from the bilinear weights (zero where a position
    crosses an integer, as in every DCN implementation).
    """
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(
            f"deform_conv2d: x must be [B,H,W,Cin] and kernel [k,k,Cin,Cout]; got {x.shape}, {kernel.shape}"
        )
    b, h, w, cin = x.shape
    kh, kw, kcin, cout = kernel.shape
    if kh != kw or kcin != cin:
        raise ValueError(f"deform_conv2d: kernel {kernel.shape} must be square [k,k,Cin={cin},Cout]")
    if padding < 0 or dilation < 1:
        raise ValueError(f"deform_conv2d: need padding >= 0 and dilation >= 1; got {padding}, {dilation}")
    k = kh
    n_taps = k * k
    ho, wo = h + 2 * padding - dilation * (k - 1), w + 2 * padding - dilation * (k - 1)
    if ho < 1 or wo < 1:
        raise ValueError(f"deform_conv2d: empty output {ho}x{wo} for input {h}x{w}, k={k}, padding={padding}")
    if offset.shape != (b, ho, wo, 2 * n_taps):
        raise ValueError(f"deform_conv2d: offset must be {(b, ho, wo, 2 * n_taps)} [B,Ho,Wo,2K]; got {offset.shape}")
    if mask is not None and mask.shape != (b, ho, wo, n_taps):
        raise ValueError(f"deform_conv2d: mask must be {(b, ho, wo, n_taps)} [B,Ho,Wo,K] or None; got {mask.shape}")

    dtype = jnp.result_type(x, offset, kernel, *(() if mask is None else (mask,)))
    # regular sampling grid of every (output pixel, tap): [Ho, 1, K] rows and [1, Wo, K] columns
    tap_i, tap_j = np.divmod(np.arange(n_taps), k)
    grid_y = jnp.asarray(np.arange(ho)[:, None, None] - padding + dilation * tap_i, dtype)
    grid_x = jnp.asarray(np.arange(wo)[None, :, None] - padding + dilation * tap_j, dtype)
    py = grid_y + offset[..., :n_taps].astype(dtype)  # [B, Ho, Wo, K]
    px = grid_x + offset[..., n_taps:].astype(dtype)
    y0, x0 = jnp.floor(py), jnp.floor(px)
    ly, lx = py - y0, px - x0  # fractional parts: the offsets' gradient flows through these
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)

    # the four corners (top-left, top-right, bottom-left, bottom-right) on a trailing axis: [B, Ho, Wo, K, 4]
    cy = y0[..., None] + jnp.array([0, 0, 1, 1], jnp.int32)
    cx = x0[..., None] + jnp.array([0, 1, 0, 1], jnp.int32)
    wy = jnp.stack([1 - ly, 1 - ly, ly, ly], axis=-1)
    wx = jnp.stack([1 - lx, lx, 1 - lx, lx], axis=-1)
    inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
    weight = jnp.where(inside, wy * wx, 0)
    if mask is not None:
        weight = weight * mask.astype(dtype)[..., None]

    # gather every corner's Cin values from the flattened image (indices clipped; outside corners weigh 0)
    flat_index = (jnp.clip(cy, 0, h - 1) * w + jnp.clip(cx, 0, w - 1)).reshape(b, -1)
    values = jax.vmap(lambda img, idx: jnp.take(img, idx, axis=0, mode="clip"))(
        x.reshape(b, h * w, cin).astype(dtype), flat_index
    ).reshape(b, ho, wo, n_taps, 4, cin)
    columns = jnp.einsum("bhwtq,bhwtqc->bhwtc", weight, values)  # deformed im2col, taps row-major
    return columns.reshape(b, ho, wo, n_taps * cin) @ kernel.astype(dtype).reshape(n_taps * cin, cout)


class DeformConv2d(nn.Module):
    """DCNv2 layer: ``deform_conv2d(x, offset_conv(x), sigmoid(mask_conv(x)), kernel) + bias``, same size.

    The offset conv (``k x k``, SAME, ``2K`` outputs in the row-then-column
    layout of :func:`deform_conv2d`) and the mask conv (``k x k``, SAME, ``K``
    outputs, then a sigmoid) have zero-initialised kernels and PyTorch-default
    biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, ``fan_in = k * k * Cin``, as
    the pure-PyTorch DCN of MADFlow's FSE branch does. So at initialisation the
    offsets are not zero: every pixel's offsets and mask logits equal the
    (small) bias values of those convs. The main kernel and bias use PyTorch's
    default initialisation.

    Attributes:
      features: output channels.
      ksize: odd kernel size ``k`` (padding ``(k - 1) // 2``, dilation 1).
      use_bias: add the ``bias`` parameter to the output.
      modulated: predict the mask (DCNv2); ``False`` is DCNv1 (no ``mask_conv``).

    Parameters: ``offset_conv`` (``kernel [k,k,Cin,2K]``, ``bias [2K]``),
    ``mask_conv`` (``kernel [k,k,Cin,K]``, ``bias [K]``), ``kernel``
    ``[k,k,Cin,features]``, ``bias [features]``.
    """

    features: int
    ksize: int = 3
    use_bias: bool = True
    modulated: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.ksize
        if k < 1 or k % 2 != 1:
            raise ValueError(f"DeformConv2d.ksize must be a positive odd integer for a same-size output; got {k}")
        n_taps, cin = k * k, x.shape[-1]
        fan_in = n_taps * cin

        def side_conv(features: int, name: str) -> nn.Conv:
            return nn.Conv(
                features,
                (k, k),
                padding="SAME",
                kernel_init=nn.initializers.zeros,
                bias_init=torch_default_bias_init(fan_in),
                name=name,
            )

        offset = side_conv(2 * n_taps, "offset_conv")(x)
        mask = nn.sigmoid(side_conv(n_taps, "mask_conv")(x)) if self.modulated else None
        kernel = self.param("kernel", torch_default_kernel_init, (k, k, cin, self.features))
        y = deform_conv2d(x, offset, mask, kernel, padding=(k - 1) // 2)
        if self.use_bias:
            y = y + self.param("bias", torch_default_bias_init(fan_in), (self.features,))
        return y
