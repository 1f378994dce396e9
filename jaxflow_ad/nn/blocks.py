"""Small NHWC building blocks: pixel (un)shuffle, PyTorch-equal bilinear resizing, StarReLU,
squeeze-and-excitation, CBAM, a 2x2 stride-2 transposed convolution and CFlow's 2-D positional
encoding.

All arrays are NHWC. Where a block reproduces a PyTorch operator the docstring states the
operator and the test compares with a NumPy transcription of its definition.

* :func:`pixel_unshuffle` / :func:`pixel_shuffle`: ``torch.nn.PixelUnshuffle`` /
  ``PixelShuffle`` with PyTorch's channel order (output channel ``c * r * r + i * r + j`` holds
  sub-pixel ``(i, j)`` of input channel ``c``).
* :func:`downsample2_bilinear`: ``F.interpolate(scale_factor=0.5, mode="bilinear",
  align_corners=False)``, which is a 2x2 mean (no antialiasing in PyTorch's bilinear kernel).
* :func:`resize_bilinear`: ``F.interpolate(size=..., mode="bilinear", align_corners=False)``.
* :class:`StarReLU`: ``s * relu(x) ** 2 + b`` (MetaFormer baselines, Yu et al. 2022; DFFormer).
* :class:`SqueezeExcite`: Hu et al. 2018, in the bias-free form of the ``SEAttention`` that
  MADFlow's flow subnet uses.
* :class:`CBAM`: Woo et al. 2018 (MADFlow Tab. 8 ablation only).
* :class:`ConvTranspose2x2`: ``ConvTranspose2d(k=2, s=2)`` as ``Dense(4F)`` + depth-to-space;
  :func:`conv_transpose_kernel_to_dense` maps a ``flax.linen.ConvTranspose`` kernel onto it.
* :func:`positional_encoding_2d`: CFlow's ``positionalencoding2d`` (Gudovskiy et al. 2022).

Initialisation follows PyTorch's defaults (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights
and biases), as the MADFlow code these blocks come from is PyTorch.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflow_ad.flows.coupling import torch_default_bias_init, torch_default_kernel_init

_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- pixel (un)shuffle
def pixel_unshuffle(x: jax.Array, r: int) -> jax.Array:
    """Space-to-depth: ``[B, H*r, W*r, C] -> [B, H, W, C*r*r]``, PyTorch's ``PixelUnshuffle(r)`` order.

    ``out[b, h, w, c*r*r + i*r + j] = x[b, h*r + i, w*r + j, c]`` (PyTorch's NCHW definition
    with the channel axis moved last).
    """
    b, hh, ww, c = x.shape
    if r < 1 or hh % r or ww % r:
        raise ValueError(f"pixel_unshuffle by {r} needs height and width divisible by it, got shape {x.shape}")
    h, w = hh // r, ww // r
    x = x.reshape(b, h, r, w, r, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h, w, c * r * r)


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
    """Depth-to-space: ``[B, H, W, C*r*r] -> [B, H*r, W*r, C]``, PyTorch's ``PixelShuffle(r)`` order.

    The inverse of :func:`pixel_unshuffle`:
    ``out[b, h*r + i, w*r + j, c] = x[b, h, w, c*r*r + i*r + j]``.
    """
    b, h, w, crr = x.shape
    if r < 1 or crr % (r * r):
        raise ValueError(f"pixel_shuffle by {r} needs channels divisible by {r * r}, got shape {x.shape}")
    c = crr // (r * r)
    x = x.reshape(b, h, w, c, r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c)


# ----------------------------------------------------------------------------- bilinear resizing
def downsample2_bilinear(x: jax.Array) -> jax.Array:
    """PyTorch ``F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)`` on NHWC.

    PyTorch's bilinear kernel does not antialias: output pixel ``o`` reads the source coordinate
    ``(o + 0.5) * 2 - 0.5 = 2 o + 0.5`` (with ``scale_factor`` given, PyTorch uses ``1 / 0.5 = 2``
    as the scale, not ``in / out``), i.e. the mean of pixels ``2o`` and ``2o + 1`` along each
    axis: a 2x2 mean. For an odd size the output has ``floor(n / 2)`` pixels and the last
    row/column is never read, so the same formula holds after cropping it.
    (``jax.image.resize`` antialiases when downsampling, so it is not used here.)
    """
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    if h2 == 0 or w2 == 0:
        raise ValueError(f"downsample2_bilinear needs height and width >= 2, got shape {x.shape}")
    x = x[:, : 2 * h2, : 2 * w2]
    return x.reshape(b, h2, 2, w2, 2, c).mean(axis=(2, 4))


def resize_bilinear(x: jax.Array, size: tuple[int, int] | int) -> jax.Array:
    """PyTorch ``F.interpolate(x, size=size, mode="bilinear", align_corners=False)`` on NHWC.

    Half-pixel centres: output pixel ``o`` reads source coordinate
    ``max((o + 0.5) * n_in / n_out - 0.5, 0)`` and blends its two integer neighbours
    (the upper one clamped to ``n_in - 1``). This is ``jax.image.resize(..., "bilinear",
    antialias=False)``, whose edge renormalisation gives the same values as PyTorch's clamp.
    Without antialiasing it also equals PyTorch for downsampling to a given ``size``.
    """
    if isinstance(size, int):
        size = (size, size)
    b, _, _, c = x.shape
    return jax.image.resize(x, (b, int(size[0]), int(size[1]), c), method="bilinear", antialias=False)


# ----------------------------------------------------------------------------- activations, attention
class StarReLU(nn.Module):
    """StarReLU ``s * relu(x) ** 2 + b`` with learnable scalars (Yu et al., "MetaFormer Baselines
    for Vision", 2022, Eq. 7; used by DFFormer and MADFlow's FSE).

    Parameters ``scale`` (init ``scale_init``, 1.0) and ``bias`` (init ``bias_init``, 0.0), both
    scalars shared over all channels.
    """

    scale_init: float = 1.0
    bias_init: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.param("scale", nn.initializers.constant(self.scale_init), ())
        b = self.param("bias", nn.initializers.constant(self.bias_init), ())
        return s * jnp.square(nn.relu(x)) + b


def _dense(features: int, fan_in: int, use_bias: bool, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=torch_default_kernel_init,
        bias_init=torch_default_bias_init(fan_in),
        precision=_HIGHEST,
        name=name,
    )


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., CVPR 2018): ``x * sigmoid(W2 relu(W1 GAP(x)))``.

    As the ``SEAttention`` of fightingcv that MADFlow's subnet calls: both fully connected
    layers are bias-free (``fc1 [C, C // r]``, ``fc2 [C // r, C]``), PyTorch-default init. The
    hidden width is ``max(1, C // reduction)`` (a width of 0 would make the gate a constant 0.5).
    """

    reduction: int = 16

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        hidden = max(1, c // self.reduction)
        s = jnp.mean(x, axis=(1, 2))
        s = nn.relu(_dense(hidden, c, False, "fc1")(s))
        g = nn.sigmoid(_dense(c, hidden, False, "fc2")(s))
        return x * g[:, None, None, :]


class CBAM(nn.Module):
    """Convolutional block attention module (Woo et al., ECCV 2018, Eq. 1-3).

    Channel attention ``Mc = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` with one shared
    bias-free MLP (``mlp_0 [C, C // r]``, ReLU, ``mlp_1 [C // r, C]``; hidden width
    ``max(1, C // reduction)``), then spatial attention
    ``Ms = sigmoid(conv_{k x k}([mean_c(x'); max_c(x')]))`` on ``x' = x * Mc`` (zero 'same'
    padding, one output channel, with bias); the result is ``x' * Ms``. The pooled maps are
    concatenated mean first, as in the paper's Eq. 3 (the official code stacks max first; the
    order only relabels the conv's input channels). ``residual=True`` returns ``x + x' * Ms``, as
    fightingcv's ``CBAMBlock`` does. MADFlow uses CBAM only as a Tab. 8 ablation in place of FSE.
    """

    reduction: int = 16
    spatial_kernel: int = 7
    residual: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        hidden = max(1, c // self.reduction)
        fc1 = _dense(hidden, c, False, "mlp_0")
        fc2 = _dense(c, hidden, False, "mlp_1")
        mlp = lambda v: fc2(nn.relu(fc1(v)))
        mc = nn.sigmoid(mlp(jnp.mean(x, axis=(1, 2))) + mlp(jnp.max(x, axis=(1, 2))))
        y = x * mc[:, None, None, :]
        pooled = jnp.stack([jnp.mean(y, axis=-1), jnp.max(y, axis=-1)], axis=-1)
        k = self.spatial_kernel
        ms = nn.Conv(
            1,
            (k, k),
            padding="SAME",
            kernel_init=torch_default_kernel_init,
            bias_init=torch_default_bias_init(2 * k * k),
            precision=_HIGHEST,
            name="spatial",
        )(pooled)
        y = y * nn.sigmoid(ms)
        return x + y if self.residual else y


# ----------------------------------------------------------------------------- transposed conv
def conv_transpose_kernel_to_dense(kernel: jax.Array) -> jax.Array:
    """Map a ``flax.linen.ConvTranspose(F, (2, 2), strides=(2, 2), padding="VALID")`` kernel
    ``[2, 2, Cin, F]`` (default ``transpose_kernel=False``) to the ``[Cin, 4F]`` kernel of
    :class:`ConvTranspose2x2`.

    flax's transposed conv (``lax.conv_transpose``) dilates the input by the stride, pads it by
    ``k - 1 = 1`` on each side and *correlates* with the kernel, so output pixel
    ``(2h + i, 2w + j)`` receives ``x[h, w] @ kernel[1 - i, 1 - j]``: the taps are flipped
    relative to the scatter definition. The dense column ``c*4 + i*2 + j`` (the order
    :func:`pixel_shuffle` reads) is therefore ``kernel[1 - i, 1 - j, :, c]``.

    (A PyTorch ``ConvTranspose2d(Cin, F, 2, stride=2)`` weight ``[Cin, F, 2, 2]`` needs no flip:
    PyTorch scatters ``x[h, w] * W[:, c, i, j]`` to ``(2h + i, 2w + j)``, so its dense kernel
    is ``W.reshape(Cin, 4 * F)``.)
    """
    if kernel.ndim != 4 or kernel.shape[:2] != (2, 2):
        raise ValueError(f"expected a [2, 2, Cin, F] kernel, got shape {kernel.shape}")
    flipped = kernel[::-1, ::-1]  # [i, j, Cin, F] = kernel[1-i, 1-j]
    cin, f = kernel.shape[2], kernel.shape[3]
    return flipped.transpose(2, 3, 0, 1).reshape(cin, 4 * f)


class ConvTranspose2x2(nn.Module):
    """``ConvTranspose2d(Cin, features, kernel_size=2, stride=2)`` (with bias) on NHWC:
    ``[B, H, W, Cin] -> [B, 2H, 2W, features]``.

    With stride equal to the kernel size the output windows do not overlap, so the layer is a
    per-pixel matrix product ``x @ kernel`` (``kernel [Cin, 4 * features]``) followed by
    :func:`pixel_shuffle` by 2, plus one bias per output channel (``bias [features]``): the same
    function as the transposed conv, with cheaper kernels on CPU. Initialisation is PyTorch's
    for ``ConvTranspose2d``: weights and bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with
    PyTorch's ``fan_in = features * 2 * 2`` (it reads the transposed weight's second axis).
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        bound = 1.0 / math.sqrt(4 * self.features)
        init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
        kernel = self.param("kernel", init, (cin, 4 * self.features))
        bias = self.param("bias", init, (self.features,))
        y = jnp.einsum("bhwi,io->bhwo", x, kernel.astype(x.dtype), precision=_HIGHEST)
        return pixel_shuffle(y, 2) + bias.astype(x.dtype)


# ----------------------------------------------------------------------------- positional encoding
def positional_encoding_2d(d_model: int, height: int, width: int) -> np.ndarray:
    """CFlow's 2-D sine/cosine positional encoding (Gudovskiy et al., WACV 2022, code
    ``positionalencoding2d``), as NHWC-ready ``float32 [height, width, d_model]``.

    With ``D = d_model // 2`` and ``div_k = exp(-2k ln(10^4) / D)`` for ``k = 0 .. D/2 - 1``:
    channels ``0:D:2`` are ``sin(w div)``, ``1:D:2`` ``cos(w div)`` (varying along the width),
    channels ``D::2`` are ``sin(h div)``, ``D+1::2`` ``cos(h div)`` (varying along the height),
    with integer positions ``h, w``. Computed in float64 on the host, returned as float32.
    """
    if d_model % 4 != 0:
        raise ValueError(f"positional_encoding_2d needs d_model divisible by 4, got {d_model}")
    d = d_model // 2
    div = np.exp(np.arange(0, d, 2, dtype=np.float64) * -(math.log(1e4) / d))
    pos_w = np.arange(width, dtype=np.float64)[:, None] * div  # [W, D/2]
    pos_h = np.arange(height, dtype=np.float64)[:, None] * div  # [H, D/2]
    pe = np.zeros((height, width, d_model), np.float64)
    pe[:, :, 0:d:2] = np.sin(pos_w)[None]
    pe[:, :, 1:d:2] = np.cos(pos_w)[None]
    pe[:, :, d::2] = np.sin(pos_h)[:, None]
    pe[:, :, d + 1 :: 2] = np.cos(pos_h)[:, None]
    return pe.astype(np.float32)
