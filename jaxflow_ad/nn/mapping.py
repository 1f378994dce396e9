"""Bidirectional feature mapping networks: NF-BMR's BMR (paper Sec. 3.3, Eq. 9-14) and B-PFM's dual projection.

Two domains hold the same image: source features ``y`` (a frozen CNN) and
target features ``z`` (in NF-BMR, the flow's latent ``z = TNF(y)``). Two
mapping networks learn to predict each domain from the other::

    z_hat = TMNN(y)      (Eq. 9, the target-domain mapping network)
    y_hat = SMNN(z)      (Eq. 10, the source-domain mapping network)

trained by the sum of both mean squared errors (Eq. 11-13,
:func:`mapping_loss`); a pixel is anomalous where either prediction fails
(Eq. 14, :func:`mapping_anomaly_map`). Both networks share the parameters of
their middle block: one subtree, ``params["shared"]``, that both directions use
and both losses train.

* :class:`BidirectionalMapping` is NF-BMR's BMR: conv-in, ``n`` bottleneck
  residual blocks, the shared residual block, ``n`` blocks, conv-out.
* :class:`DualProjection` is B-PFM's ``DualProjectionNet`` (Wan et al., TII
  2022), five 1x1 convs with a shared middle conv: the "NF + B-PFM" ablation
  of NF-BMR (Table 5).

Both take ``(y, z)`` and return ``(z_hat, y_hat)``, and have ``target_map(y)``
and ``source_map(z)`` for one direction. Convolutions carry biases and use
PyTorch's default initialisation (the papers' code is PyTorch).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflow_ad.flows.coupling import torch_default_bias_init, torch_default_kernel_init


def l2_normalize_channels(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||_2, eps)`` over the channel (last) axis, as B-PFM's ``F.normalize`` of the features."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def mapping_terms(y: jax.Array, z: jax.Array, y_hat: jax.Array, z_hat: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(loss^s, loss^T)`` (Eq. 11, 12): the mean squared error of each reconstruction.

    Each term is ``||.||^2 / (w h c)`` per sample, averaged over the batch (the
    paper is silent on the batch; B-PFM takes the mean), i.e. the mean over all
    elements.
    """
    return jnp.mean((y - y_hat) ** 2), jnp.mean((z - z_hat) ** 2)


def mapping_loss(y: jax.Array, z: jax.Array, y_hat: jax.Array, z_hat: jax.Array) -> jax.Array:
    """``loss^s + loss^T`` (Eq. 13): :func:`mapping_terms` summed."""
    loss_s, loss_t = mapping_terms(y, z, y_hat, z_hat)
    return loss_s + loss_t


def mapping_anomaly_map(y: jax.Array, z: jax.Array, y_hat: jax.Array, z_hat: jax.Array) -> jax.Array:
    """The anomaly score map (Eq. 14): ``(sum_c (y - y_hat)^2 + sum_c (z - z_hat)^2) / 2`` per pixel.

    ``[B, H, W, C]`` inputs, ``[B, H, W]`` map at the features' resolution (the
    caller upsamples to the image: bilinear in B-PFM). As in B-PFM's default,
    the residuals are not divided by per-pixel training variances.
    """
    return 0.5 * (jnp.sum((y - y_hat) ** 2, axis=-1) + jnp.sum((z - z_hat) ** 2, axis=-1))


def torch_conv(features: int, ksize: int, fan_in_channels: int, name: str | None = None, precision=None) -> nn.Conv:
    """A biased 'same' conv with PyTorch's default initialisation (``fan_in_channels``: its input channels)."""
    return nn.Conv(
        features,
        (ksize, ksize),
        padding="SAME",
        kernel_init=torch_default_kernel_init,
        bias_init=torch_default_bias_init(ksize * ksize * fan_in_channels),
        precision=precision,
        name=name,
    )


class BottleneckResidual(nn.Module):
    """NF-BMR's residual block: ``x + relu(conv1x1(relu(conv3x3(relu(conv1x1(x))))))``.

    "A single residual block consists of a 1x1, 3x3, and 1x1 convolutional
    sequence, and a ReLU activation function follows each convolutional layer"
    (Sec. 3.3); the identity skip is the block's name. Read literally, the ReLU
    also follows the last conv, so the residual added to ``x`` is non-negative.
    The paper gives no bottleneck width; the 3x3 conv is zero-padded.

    Attributes:
      width: channels in and out.
      bottleneck: channels of the 1x1 -> 3x3 -> 1x1 middle.
      ksize: the middle kernel (3).
    """

    width: int
    bottleneck: int
    ksize: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.width:
            raise ValueError(f"BottleneckResidual(width={self.width}) got {x.shape[-1]} channels")
        h = nn.relu(torch_conv(self.bottleneck, 1, self.width, "conv0")(x))
        h = nn.relu(torch_conv(self.bottleneck, self.ksize, self.bottleneck, "conv1")(h))
        h = nn.relu(torch_conv(self.width, 1, self.bottleneck, "conv2")(h))
        return x + h


class _ResidualPath(nn.Module):
    """One BMR direction: conv-in, ``blocks`` residual blocks, the shared ``middle``, ``blocks`` blocks, conv-out.

    ``middle`` is a module owned by the parent, so its parameters live once, in
    the parent's scope.
    """

    out_channels: int
    width: int
    blocks: int
    bottleneck: int
    ksize_io: int
    middle: nn.Module

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = torch_conv(self.width, self.ksize_io, x.shape[-1], "conv_in")(x)
        for i in range(self.blocks):
            h = BottleneckResidual(self.width, self.bottleneck, name=f"pre_{i}")(h)
        h = self.middle(h)
        for i in range(self.blocks):
            h = BottleneckResidual(self.width, self.bottleneck, name=f"post_{i}")(h)
        return torch_conv(self.out_channels, self.ksize_io, self.width, "conv_out")(h)


class BidirectionalMapping(nn.Module):
    """NF-BMR's bidirectional mapping residual network (BMR, Fig. 4, Eq. 9-10).

    ``target_map = TMNN: y -> z_hat`` and ``source_map = SMNN: z -> y_hat``,
    each ``conv_in (channels -> width) -> blocks x BottleneckResidual -> shared
    BottleneckResidual -> blocks x BottleneckResidual -> conv_out (width ->
    channels)``. The middle block is one module whose parameters (``params
    ["shared"]``) both directions use; ``params["tmnn"]`` and ``params["smnn"]``
    hold the rest.

    Where the paper is silent, chosen here: conv-in and conv-out are 1x1
    (``ksize_io``) and linear (no activation: conv-out predicts features of
    either sign; conv-in starts the residual stream); the bottleneck is
    ``width // 4`` (ResNet's ratio). The paper's setting is ``channels=304,
    width=1024`` (its ``c_latent``), ``blocks=2``.

    Attributes:
      channels: channels of both domains (the flow keeps the channel count).
      width: channels inside the mapping networks.
      blocks: residual blocks on each side of the shared one (``n``).
      bottleneck: middle channels of a residual block; ``None``: ``width // 4``.
      ksize_io: kernel of conv-in and conv-out.
      l2_normalize: L2-normalise each input over channels first, as B-PFM
        normalises its features. The module normalises only what it maps: the
        targets of :func:`mapping_loss` and :func:`mapping_anomaly_map` must then
        be normalised too (:func:`l2_normalize_channels`).
    """

    channels: int
    width: int
    blocks: int = 2
    bottleneck: int | None = None
    ksize_io: int = 1
    l2_normalize: bool = False

    def setup(self):
        bottleneck = self.bottleneck or max(1, self.width // 4)
        self.shared = BottleneckResidual(self.width, bottleneck)
        path = lambda: _ResidualPath(self.channels, self.width, self.blocks, bottleneck, self.ksize_io, self.shared)
        self.tmnn = path()
        self.smnn = path()

    def _prep(self, x):
        return l2_normalize_channels(x) if self.l2_normalize else x

    def target_map(self, y: jax.Array, *, train: bool = False) -> jax.Array:
        """``z_hat = TMNN(y)`` (Eq. 9). ``train`` is accepted for a common interface (no batch statistics)."""
        del train
        return self.tmnn(self._prep(y))

    def source_map(self, z: jax.Array, *, train: bool = False) -> jax.Array:
        """``y_hat = SMNN(z)`` (Eq. 10)."""
        del train
        return self.smnn(self._prep(z))

    def __call__(self, y: jax.Array, z: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """``(z_hat, y_hat)``."""
        return self.target_map(y, train=train), self.source_map(z, train=train)


class _ConvBNReLU(nn.Module):
    """B-PFM's ``Conv_BN_Relu``: 1x1 conv (biased), BatchNorm, ReLU."""

    features: int
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = torch_conv(self.features, 1, x.shape[-1], "conv")(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=1e-5, name="bn")(h)
        return nn.relu(h)


class _ProjectionPath(nn.Module):
    """One B-PFM direction: ``in -> in/2+L -> 2L`` (Conv-BN-ReLU), the shared ``middle`` (2L -> L),
    ``L -> 2L -> out/2+L`` (Conv-BN-ReLU), ``-> out`` (plain conv)."""

    in_channels: int
    out_channels: int
    latent: int
    middle: nn.Module
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        lat, m = self.latent, self.momentum
        h = _ConvBNReLU(self.in_channels // 2 + lat, m, name="enc0")(x, train)
        h = _ConvBNReLU(2 * lat, m, name="enc1")(h, train)
        h = self.middle(h)
        h = _ConvBNReLU(2 * lat, m, name="dec0")(h, train)
        h = _ConvBNReLU(self.out_channels // 2 + lat, m, name="dec1")(h, train)
        return torch_conv(self.out_channels, 1, h.shape[-1], "dec2")(h)


class DualProjection(nn.Module):
    """B-PFM's dual projection network (``DualProjectionNet``), for the NF-BMR ablation "NF + B-PFM".

    All convs are 1x1 and biased. Source -> target (``params["tmnn"]``):
    ``enc: source -> source/2 + L -> 2L`` (Conv-BN-ReLU each), the shared coder
    ``2L -> L`` (``params["shared"]``, a plain conv used by both directions),
    ``dec: L -> 2L -> target/2 + L`` (Conv-BN-ReLU) ``-> target`` (plain conv).
    Target -> source (``params["smnn"]``) mirrors it. B-PFM's latent ``L`` is
    200/400/900 for its three ResNet taps.

    BatchNorm uses batch statistics when ``train`` (apply with
    ``mutable=["batch_stats"]`` to update the running ones) and the running
    statistics otherwise. ``momentum=0.9`` is PyTorch's 0.1; flax's running
    variance is the biased batch variance where PyTorch keeps the unbiased one
    (a factor ``n / (n - 1)``, ``n = B * H * W``).

    Attributes:
      source_channels: channels of ``y``.
      latent: ``L``.
      target_channels: channels of ``z``; ``None``: ``source_channels``.
      l2_normalize: as in :class:`BidirectionalMapping` (B-PFM normalises both feature sets).
      momentum: BatchNorm running-average decay.
    """

    source_channels: int
    latent: int
    target_channels: int | None = None
    l2_normalize: bool = False
    momentum: float = 0.9

    def setup(self):
        src, tgt = self.source_channels, self.target_channels or self.source_channels
        self.shared = torch_conv(self.latent, 1, 2 * self.latent)
        self.tmnn = _ProjectionPath(src, tgt, self.latent, self.shared, self.momentum)
        self.smnn = _ProjectionPath(tgt, src, self.latent, self.shared, self.momentum)

    def _prep(self, x):
        return l2_normalize_channels(x) if self.l2_normalize else x

    def target_map(self, y: jax.Array, *, train: bool = False) -> jax.Array:
        return self.tmnn(self._prep(y), train)

    def source_map(self, z: jax.Array, *, train: bool = False) -> jax.Array:
        return self.smnn(self._prep(z), train)

    def __call__(self, y: jax.Array, z: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """``(z_hat, y_hat)``."""
        return self.target_map(y, train=train), self.source_map(z, train=train)
