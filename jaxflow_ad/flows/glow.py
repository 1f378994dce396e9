"""GLOW-style coupling blocks and the flow likelihood of NF-BMR (target-domain flow, paper Sec. 3.2).

NF-BMR (Zhang et al., CMC 2024) maps source features ``y`` (EfficientNet-b5,
304 channels at 24x24) to a latent ``z ~ N(0, I)`` with 4 coupling blocks, each
a fixed channel split of randomly arranged channels and two affine couplings
(Eq. 3-6) whose subnets have one hidden layer of 1024 channels; the flow is
trained by Eq. 8.

What the paper does not say, and what is chosen here (after AST and CS-Flow,
the single-scale flows NF-BMR builds on):

* The "random, fixed arrangement" of channels: a seeded permutation at the start
  of every block (:class:`ChannelPermutation`), as AST (``PermuteRandom`` with
  seed = block index) and CS-Flow do.
* The subnet: ``Conv kxk -> ReLU -> Conv kxk`` with k = 3 and the last conv
  zero-initialised (:class:`~jaxflow_ad.flows.coupling.ConvSubnet` with
  ``activation=nn.relu``); the split of its output into log-scale and shift is
  the paper's.
* The log-scale: AST's soft clamp ``clamp * 0.636 * atan(s / clamp)`` with
  clamp 1.9 (CS-Flow: 3), and no volume normalization.
* The NLL (Eq. 8) per sample, divided by ``h * w * c`` as CS-Flow does, or not
  (AST, MADFlow): :func:`nfbmr_nll` has both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflow_ad.flows.coupling import ChannelAffineCoupling, ConvSubnet


def permutation(channels: int, seed: int, legacy: bool = False) -> np.ndarray:
    """The channel order of :class:`ChannelPermutation`: ``np.random.default_rng(seed).permutation(channels)``,
    or with ``legacy`` NumPy's legacy generator, ``np.random.RandomState(seed).permutation(channels)``:
    the order AST and MADFlow draw (``np.random.seed(k); np.random.permutation(c)`` before block k)."""
    if legacy:
        return np.random.RandomState(seed).permutation(channels)
    return np.random.default_rng(seed).permutation(channels)


class ChannelPermutation(nn.Module):
    """A fixed, seeded permutation of the channels (last axis): ``y = x[..., perm]``, logdet 0.

    AST and CS-Flow shuffle the channels before each coupling block with a
    permutation drawn once from a fixed seed; NF-BMR's "randomly selected along
    its channel dimension ... with a fixed arrangement" (Sec. 3.2) is read the
    same way. The permutation is a constant recomputed from ``seed``, not a
    variable: nothing of it is trained or stored in a checkpoint (a test pins
    the drawn order, so a NumPy that drew differently would be noticed).
    """

    channels: int
    seed: int = 0
    legacy: bool = False

    @property
    def perm(self) -> np.ndarray:
        return permutation(self.channels, self.seed, self.legacy)

    def _check(self, x):
        if x.shape[-1] != self.channels:
            raise ValueError(f"ChannelPermutation(channels={self.channels}) got {x.shape[-1]} channels")

    def forward(self, x, cond=None, *, train: bool = False):
        del cond, train
        self._check(x)
        return x[..., self.perm], jnp.zeros((x.shape[0],), x.dtype)

    def inverse(self, y, cond=None, *, train: bool = False):
        del cond, train
        self._check(y)
        return y[..., np.argsort(self.perm)], jnp.zeros((y.shape[0],), y.dtype)


class GlowBlock(nn.Module):
    """One NF-BMR coupling block: a fixed channel permutation, then two affine couplings in GLOW order.

    After the permutation the channels are split into ``y1`` (the first
    ``c // 2``) and ``y2`` (the rest), and (paper Eq. 3, 4, 6)::

        z2 = exp(s1(y1)) * y2 + b1(y1)
        z1 = exp(s2(z2)) * y1 + b2(z2)
        z  = concat(z1, z2)

    with ``s_i = clamp * 0.636 * atan(s_raw_i / clamp)`` (AST's soft clamp), no
    volume normalization, and ``log|det| = sum(s1) + sum(s2)`` over pixels and
    channels. The paper's printed Eq. 5 conditions the second coupling on
    ``y2``, the *untransformed* input (``z1 = exp(s2(y2)) * y1 + b2(y2)``): that
    map has no closed-form inverse (``y1`` and ``y2`` would have to be solved
    for jointly) and its log-determinant is not ``sum(s1) + sum(s2)``, since
    the Jacobian is then not triangular. The invertible GLOW order above, the
    one of Real-NVP/GLOW, FrEIA's ``GLOWCouplingBlock`` and AST, is
    implemented. (FrEIA transforms the first half first; with a random
    permutation in front this is the same family of maps.)

    Built from two :class:`~jaxflow_ad.flows.coupling.ChannelAffineCoupling`:
    ``coupling1`` (``flip=False``: ``y1`` conditions, ``y2`` moves) then
    ``coupling2`` (``flip=True``: ``z2`` conditions, ``y1`` moves). An optional
    condition reaches both subnets only.

    Attributes:
      channels: feature channels (304 in NF-BMR).
      hidden: hidden channels of each subnet (1024 in NF-BMR).
      ksize: subnet kernel size (the paper is silent; 3 as in AST/CS-Flow).
      clamp: soft-clamp constant (AST 1.9; CS-Flow 3).
      seed: seed of the block's permutation (AST: the block index).
      use_bias: biases in the subnet convs (PyTorch's default; the paper is silent).
      subnet: a factory ``out_channels -> module`` replacing the default
        ``ConvSubnet(hidden, ksize, activation=relu)``.
      conv_impl: see :mod:`jaxflow_ad.nn.conv`.
    """

    channels: int
    hidden: int = 1024
    ksize: int = 3
    clamp: float = 1.9
    seed: int = 0
    use_bias: bool = True
    subnet: Callable[[int], nn.Module] | None = None
    conv_impl: str = "xla"

    def setup(self):
        factory = self.subnet or functools.partial(
            ConvSubnet,
            hidden=self.hidden,
            ksize=self.ksize,
            activation=nn.relu,
            use_bias=self.use_bias,
            conv_impl=self.conv_impl,
        )
        make = lambda flip: ChannelAffineCoupling(
            self.channels, subnet=factory, clamp=self.clamp, volume_norm="none", flip=flip
        )
        self.permute = ChannelPermutation(self.channels, self.seed)
        self.coupling1 = make(False)
        self.coupling2 = make(True)

    def forward(self, x, cond=None, *, train: bool = False):
        logdet = 0.0
        for layer in (self.permute, self.coupling1, self.coupling2):
            x, ld = layer.forward(x, cond, train=train)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y, cond=None, *, train: bool = False):
        logdet = 0.0
        for layer in (self.coupling2, self.coupling1, self.permute):
            y, ld = layer.inverse(y, cond, train=train)
            logdet = logdet + ld
        return y, logdet


class CondGlowBlock(nn.Module):
    """One block of AST's teacher and MADFlow's FSFlow: a fixed permutation, then a GLOW coupling whose
    subnets see a condition (the positional encoding), with the log-determinant per pixel.

    After the permutation ``x1`` is the first ``c // 2`` channels and ``x2`` the rest, and (AST/MADFlow
    ``glow_coupling_layer_cond``; MADFlow paper Eq. 7-10)::

        y1 = exp(c(s2)) * x1 + t2,   (s2, t2) = f2([x2, cond])
        y2 = exp(c(s1)) * x2 + t1,   (s1, t1) = f1([y1, cond])

    with ``c(s) = clamp * 0.636 * atan(s / clamp)`` (clamp 1.9) and the log-determinant of pixel
    ``(i, j)`` the sum over channels of ``c(s1) + c(s2)``: the Jacobian is block-diagonal over
    pixels only when the subnets are 1x1; with k x k subnets it is still triangular (each half is
    updated from the other), so the total log-determinant is the sum of the per-pixel ones. The
    first half moves first (the reverse of :class:`GlowBlock`'s order). The official code also
    clips the outputs to +-1e6: not reproduced (the clamp bounds each scale by e^1.9 already, and a
    clip would make the block non-invertible).

    Attributes:
      channels: input channels.
      subnet: factory ``out_channels -> module`` called as ``module(h, train=...)`` on
        ``[x_half, cond]``; its output must start at zero (a zero-initialised gain) so a fresh
        block is the permutation alone.
      clamp: soft-clamp constant.
      seed: the permutation's seed (the block index).
      legacy_permutation: draw it as AST/MADFlow do (``np.random.seed``), see :func:`permutation`.
    """

    channels: int
    subnet: Callable[[int], nn.Module]
    clamp: float = 1.9
    seed: int = 0
    legacy_permutation: bool = True

    def setup(self):
        self.permute = ChannelPermutation(self.channels, self.seed, self.legacy_permutation)
        make = lambda flip: ChannelAffineCoupling(
            self.channels, subnet=self.subnet, clamp=self.clamp, volume_norm="none", flip=flip
        )
        self.coupling2 = make(True)  # x2 conditions, x1 moves
        self.coupling1 = make(False)  # y1 conditions, x2 moves

    def forward_map(self, x, cond=None, *, train: bool = False):
        """``(y, logdet_map [B, H, W])``."""
        x, _ = self.permute.forward(x)
        x, ld2 = self.coupling2.forward_map(x, cond, train=train)
        x, ld1 = self.coupling1.forward_map(x, cond, train=train)
        return x, ld1 + ld2

    def inverse_map(self, y, cond=None, *, train: bool = False):
        y, ld1 = self.coupling1.inverse_map(y, cond, train=train)
        y, ld2 = self.coupling2.inverse_map(y, cond, train=train)
        y, _ = self.permute.inverse(y)
        return y, ld1 + ld2

    def forward(self, x, cond=None, *, train: bool = False):
        y, ld = self.forward_map(x, cond, train=train)
        return y, jnp.sum(ld, axis=(1, 2))

    def inverse(self, y, cond=None, *, train: bool = False):
        x, ld = self.inverse_map(y, cond, train=train)
        return x, jnp.sum(ld, axis=(1, 2))


def nfbmr_nll(z: jax.Array, logdet: jax.Array, divide: bool = True) -> jax.Array:
    """The flow loss of NF-BMR (Eq. 8), ``||z||^2 / 2 - log|det dz/dy|`` per sample, averaged over the batch.

    ``z``: ``[B, ...]`` latents (``[B, H, W, C]``), ``logdet``: ``[B]``.
    ``divide=True`` divides each sample's value by its dimension ``h * w * c``
    (CS-Flow's normalisation: the loss is then comparable across feature sizes
    and the learning rate need not change with them); ``divide=False`` is Eq. 8
    as printed (AST and MADFlow). The constant ``d/2 * log(2 pi)`` is omitted,
    as in the paper. The paper does not say how the batch is reduced: the mean.
    """
    b = z.shape[0]
    dims = int(np.prod(z.shape[1:]))
    nll = 0.5 * jnp.sum(z.reshape(b, -1) ** 2, axis=1) - logdet
    if divide:
        nll = nll / dims
    return jnp.mean(nll)
