"""Affine coupling (RealNVP; PyramidFlow Eq. 3-5) and its subnets.

Every invertible layer has ``forward(x, cond=None, *, train=False) -> (y, logdet)``
and ``inverse(y, cond=None, *, train=False) -> (x, logdet)``, logdet per sample.

``y1 = exp(s(x0)) * x1 + t(x0)``, inverse ``x1 = (y1 - t) * exp(-s)``,
``log|det| = sum s`` (Eq. 5). The log-scale goes through the official soft
clamp ``s = 2 * 0.636 * atan(s_raw / 2)`` (|s| < 1.998), then through volume
normalization. The last convolution of the subnet is zero-initialised so a new
coupling is the identity.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflow_ad.flows.volume_norm import VolumeNorm
from jaxflow_ad.nn.conv import Conv2D

# PyTorch's default conv init (kaiming_uniform with a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def soft_clamp(s_raw: jax.Array, clamp: float = 2.0) -> jax.Array:
    """Official soft clamp ``clamp * 0.636 * atan(s_raw / clamp)``."""
    return clamp * 0.636 * jnp.arctan(s_raw / clamp)


class AffineParams(nn.Module):
    """Subnet estimating ``(s, t)`` (official ``AffineParamBlock``).

    ``Conv(k, no bias) -> LeakyReLU(0.01) -> Conv(k, no bias, zero init)``, split
    into ``(s_raw, t)`` along channels, soft clamp, volume normalization.

    Attributes:
      out_channels: channels of ``s`` and of ``t`` (the conv outputs twice that).
      hidden: hidden channels (official: ``2 * out_channels``).
      ksize: kernel size (7 in the paper).
      clamp: soft-clamp constant (2).
      volume_norm: ``"CVN"``, ``"SVN"`` or ``"none"``.
      last_stride: 2 evaluates the last conv only at even pixels (exactly what
        the official 'down' block keeps after nearest resampling). Only valid
        where the volume-norm statistics do not need the other pixels (CVN, none).
      conv_impl: how the convs are differentiated, see :mod:`jaxflow_ad.nn.conv`:
        ``"xla"`` (``lax.conv`` and its autodiff), ``"im2col"``, ``"fft"``,
        ``"fft_grad"`` (tiled-FFT gradients: fastest on XLA:CPU) or ``"auto"``.
        Same function and parameters either way.

    ``__call__(x, ..., upsampled=True)`` takes a half-resolution ``x`` and
    evaluates the subnet on ``nearest_up2(x)``; the first conv then runs as four
    polyphase convs at the coarse resolution (same function, 3x fewer
    multiply-adds for k=7).
    """

    out_channels: int
    hidden: int
    ksize: int = 7
    clamp: float = 2.0
    volume_norm: str = "CVN"
    last_stride: int = 1
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, update_stats: bool = True, upsampled: bool = False):
        h = Conv2D(self.hidden, self.ksize, kernel_init=torch_default_kernel_init, impl=self.conv_impl, name="conv0")(
            x, upsample=upsampled
        )
        h = nn.leaky_relu(h, 0.01)
        o = Conv2D(
            2 * self.out_channels,
            self.ksize,
            stride=self.last_stride,
            kernel_init=nn.initializers.zeros,
            impl=self.conv_impl,
            name="conv1",
        )(h)
        s_raw, t = jnp.split(o, 2, axis=-1)
        s = VolumeNorm(self.volume_norm, name="norm")(soft_clamp(s_raw, self.clamp), train, update_stats)
        return s, t


def affine_forward(x, s, t):
    return jnp.exp(s) * x + t


def affine_inverse(y, s, t):
    return (y - t) * jnp.exp(-s)


def sum_per_sample(s: jax.Array) -> jax.Array:
    return jnp.sum(s.reshape(s.shape[0], -1), axis=1)


def leaky_relu_001(x: jax.Array) -> jax.Array:
    """LeakyReLU with slope 0.01 (PyTorch's default), the activation of :class:`ConvSubnet` by default."""
    return nn.leaky_relu(x, 0.01)


def torch_default_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default conv/linear bias init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / float(fan_in) ** 0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class ConvSubnet(nn.Module):
    """The default coupling subnet: ``Conv(k) -> activation -> Conv(k, zero init)``.

    Returns the raw ``2 * out_channels`` outputs (log-scale and shift); the
    zero-initialised last conv makes a fresh coupling the identity.

    Attributes:
      out_channels, hidden, ksize: channels out, hidden channels, kernel size.
      conv_impl: see :mod:`jaxflow_ad.nn.conv`.
      activation: the hidden nonlinearity; default LeakyReLU(0.01) (PyramidFlow's
        subnet), ``nn.relu`` for the GLOW/AST/NF-BMR subnet (:mod:`jaxflow_ad.flows.glow`).
      use_bias: add biases ``bias0`` (PyTorch default init) and ``bias1`` (zero
        init) to the two convs, as PyTorch's ``Conv2d`` does by default. Off by
        default: the parameters are then the two bias-free kernels only.
    """

    out_channels: int
    hidden: int = 16
    ksize: int = 3
    conv_impl: str = "xla"
    activation: Callable[[jax.Array], jax.Array] = leaky_relu_001
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        h = Conv2D(self.hidden, self.ksize, kernel_init=torch_default_kernel_init, impl=self.conv_impl, name="conv0")(x)
        if self.use_bias:
            h = h + self.param("bias0", torch_default_bias_init(self.ksize**2 * x.shape[-1]), (self.hidden,))
        h = self.activation(h)
        last = Conv2D(
            self.out_channels, self.ksize, kernel_init=nn.initializers.zeros, impl=self.conv_impl, name="conv1"
        )
        o = last(h)
        if self.use_bias:
            o = o + self.param("bias1", nn.initializers.zeros, (self.out_channels,))
        return o


def broadcast_condition(cond: jax.Array, like: jax.Array) -> jax.Array:
    """A condition for NHWC maps: ``[B, D]`` vectors are repeated over H x W, ``[B, H, W, D]``
    maps must have the maps' size."""
    if cond.ndim == 2:
        return jnp.broadcast_to(cond[:, None, None, :], like.shape[:3] + cond.shape[-1:])
    if cond.ndim == 4 and cond.shape[:3] == like.shape[:3]:
        return cond
    raise ValueError(f"a coupling condition must be [B, D] or [B, H, W, D] matching {like.shape[:3]}, got {cond.shape}")


class ChannelAffineCoupling(nn.Module):
    """Channel-split affine coupling (Fig. 3(a)) with a pluggable subnet and an optional condition.

    ``y_t = exp(s) * x_t + t`` with ``(s_raw, t) = subnet(concat[x_c, cond])``,
    ``s = VN(soft_clamp(s_raw))``; ``flip`` swaps the roles of the halves. The
    condition (a ``[B, D]`` vector or a ``[B, H, W, D]`` map: a positional
    encoding, another modality's features) enters the subnet only, so the
    inverse and the log-determinant are those of the unconditional coupling.

    Attributes:
      channels: channels of the input.
      subnet: a factory ``out_channels -> flax module`` mapping ``[B, H, W, C_in]`` to
        ``[B, H, W, out_channels]`` (called with ``train=``); its last layer should be
        zero-initialised so that a fresh flow is the identity. ``None``:
        :class:`ConvSubnet` with ``hidden`` and ``ksize``. CS-Flow's, AST's or MADFlow's
        subnets plug in here.
      clamp: soft-clamp constant of the log-scale.
      volume_norm: ``"CVN"``, ``"SVN"`` or ``"none"``.
    """

    channels: int
    subnet: Callable[[int], nn.Module] | None = None
    hidden: int = 16
    ksize: int = 3
    clamp: float = 2.0
    volume_norm: str = "none"
    flip: bool = False

    def setup(self):
        half = self.channels // 2
        n_trans = half if self.flip else self.channels - half
        factory = self.subnet or functools.partial(ConvSubnet, hidden=self.hidden, ksize=self.ksize)
        self.net = factory(2 * n_trans)
        self.norm = VolumeNorm(self.volume_norm)

    def _split(self, x):
        half = self.channels // 2
        a, b = x[..., :half], x[..., half:]
        return (b, a) if self.flip else (a, b)  # (conditioning, transformed)

    def _join(self, cond, trans):
        return jnp.concatenate([trans, cond] if self.flip else [cond, trans], axis=-1)

    def _affine(self, x_c, cond, train, update_stats):
        h = x_c if cond is None else jnp.concatenate([x_c, broadcast_condition(cond, x_c)], axis=-1)
        s_raw, t = jnp.split(self.net(h, train=train), 2, axis=-1)
        return self.norm(soft_clamp(s_raw, self.clamp), train, update_stats), t

    def forward(self, x, cond=None, *, train: bool = False):
        y, s = self._forward_s(x, cond, train)
        return y, sum_per_sample(s)

    def inverse(self, y, cond=None, *, train: bool = False):
        x, s = self._inverse_s(y, cond, train)
        return x, -sum_per_sample(s)

    def forward_map(self, x, cond=None, *, train: bool = False):
        """``(y, logdet_map)`` with the log-determinant per pixel, ``[B, H, W]`` (the log-scales summed
        over channels only): the per-pixel likelihood AST and MADFlow score with. Its sum over pixels
        is :meth:`forward`'s logdet."""
        y, s = self._forward_s(x, cond, train)
        return y, jnp.sum(s, axis=-1)

    def inverse_map(self, y, cond=None, *, train: bool = False):
        """``(x, logdet_map)`` of the inverse, per pixel (``-`` the forward's)."""
        x, s = self._inverse_s(y, cond, train)
        return x, -jnp.sum(s, axis=-1)

    def _forward_s(self, x, cond, train):
        x_c, x1 = self._split(x)
        s, t = self._affine(x_c, cond, train, True)
        return self._join(x_c, affine_forward(x1, s, t)), s

    def _inverse_s(self, y, cond, train):
        y_c, y1 = self._split(y)
        s, t = self._affine(y_c, cond, train, False)
        return self._join(y_c, affine_inverse(y1, s, t)), s
