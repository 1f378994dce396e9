"""MADFlow (Lan et al., "MADFlow: multimodal difference compensation flow for multimodal anomaly
detection"; paper ``000_db8fe90718481850``): RGB + point cloud, a cross-modal alignment network, a
difference-compensated fusion and a normalizing flow with frequency-spatial enhancement.

The official code (``SYLan2019/MADFlow@29de068``) does not run as released (missing modules, a
conv without a kernel size, mismatched call signatures; project notes ``madflow.md``); this is
written from the paper and that code read together, with the choices below.

Pipeline:

1. **Frozen features** (:class:`MADFlowFeatures`, one multimodal
   :class:`~jaxflow_ad.backbones.FrozenExtractor`, cached once per split by the engine):

   * ``rgb``: EfficientNet-B5 at 768 px with efficientnet_pytorch's static padding, blocks 19
     and 26 (128 + 176 channels at 48x48) halved by torch's bilinear ``scale_factor=0.5``
     (``align_corners=False``: the 2x2 mean) and concatenated with block 35 (304 at 24x24):
     F_img, 608 channels at S = 24 (paper Sec. 4.2, code ``model_dual.py``). Offline: the
     EfficientNet-Lite0 stand-in at matching strides (noted in the log and report).
   * ``points``: Point-MAE (G = 1024 groups of M = 128 points; blocks 3, 7, 11 after the shared
     LayerNorm, 1152 channels) on the organised cloud, 3-NN interpolated back to the points,
     scattered to the grid, ``AvgPool(3, 1)`` then ``AdaptiveAvgPool(S)``
     (:func:`~jaxflow_ad.backbones.pointmae.cloud_feature_map`): F_pc, 1152 at S. Random
     weights offline (said in the report); converted ones with ``third_party.convert --arch
     pointmae``.
   * ``depth``: the AST/MADFlow depth map (reader option ``depth``: filled z, corner-plane
     background, 7 mm threshold, largest component, centred, x 100; tire x 1) resized to 8S and
     ``PixelUnshuffle(8)``: F_d, 64 at S.
   * ``fg8`` / ``fgS``: the foreground binarised at 8S, dilated with an 8x8 kernel, and its
     bilinear (soft) reduction to S (:func:`soft_foreground`): the masks of the losses and the score.

2. **Stage ``cma``**, cross-modal alignment (Eq. 15): only the CMA trains. CMA(F_pc) is compared
   with F^ = bilinear(F_img, 8S) over the dilated foreground at 8S:
   ``L = (1 - mean cos) + beta * MSE`` (:func:`cma_loss`, beta = 1). The official network has 8
   layers (``conv3 1152->880, ReLU, conv3 ->440, ReLU, ConvT2 ->128, conv3 ->256, ReLU, ConvT2
   ->512, ConvT2 ->608, conv3 608->608, ReLU``, output at 8S; ``model.cma.arch="official"``); the
   paper describes "four convolutions and activations" (Fig. 2b, Tab. 10;
   ``arch="paper"``, ``layers``): L conv3x3 + ReLU at S, widths stepping linearly from 1152 to
   608, the output upsampled bilinearly to 8S. ``width_scale`` and ``upsamples`` shrink the
   official network for CPU runs (:func:`cma_plan`).

3. **CDCF** (Eq. 6 as the official code computes it; :func:`difference_map`):
   ``ano = || F^/||F^|| - CMA/||CMA|| ||_2`` per pixel at 8S, detached, and the flow input
   ``concat(F_img, F_d + PixelUnshuffle8(ano))`` (672 channels with B5). Eq. 6 as printed adds
   F_d to a 608-channel term, which does not type-check; only the code's reading runs.

4. **Stage ``flow``**, FSFlow (Sec. 3.3): the backbones and the CMA frozen (the CMA's difference
   maps are computed once per training split when the stage starts, ``Stage.derive``); four
   :class:`~jaxflow_ad.flows.glow.CondGlowBlock` s (a fixed permutation drawn as the code draws it,
   ``np.random.seed(k)``, then a GLOW coupling with AST's soft clamp 1.9), a 32-channel CFlow
   positional encoding concatenated to every subnet input, and the subnet
   :class:`FSFlowSubnet`: ``conv k (replicate padding) -> FSE -> SE(16) -> ReLU -> conv k``, times
   a scalar gamma initialised to 0 (k = 3, 3, 3, 5; hidden 64). FSE
   (:class:`~jaxflow_ad.nn.fse.FSE`, Eq. 11-14): a frequency branch of N = 3 global filters mixed
   by input-dependent softmax routing, a spatial branch routed through modulated deformable
   convolutions, combined by the paper's gate (``model.flow.fse.mode="gate"``) or summed as the
   code does (``"add"``). Loss (Eq. 17): ``mean over pixels of fg_S * (0.5 ||z||^2 - logdet)``,
   not divided by the channel count (:func:`flow_nll`).

5. **Score** (the code; the paper does not specify it): per pixel ``fg_S * (0.5 ||z||^2 -
   logdet)`` at S, the image score its maximum; the map upsampled bilinearly to the image size
   for the pixel metrics (the code upsamples bicubically x8 and compares at 192 px).

Where paper and code disagree, or both are silent, and the choice:

* CMA depth: the code's 8 layers by default (``model.cma.arch``), the paper's L-layer network
  as an option; the code's final ReLU is kept (``final_relu``; it cannot match the negative
  EfficientNet features, but it is what ran).
* CMA optimiser: the code's Adam lr 1e-3 with StepLR(15 epochs, 0.9), torch-coupled weight decay
  1e-5, 50 epochs, batch 16 (the paper says lr 1e-5, batch 8). The last epoch is kept: the code
  picks the checkpoint with the best *test* AUROC, which would flatter the result.
* Flow optimiser: Adam lr 1e-3, eps 1e-8, weight decay 1e-5, StepLR(60 epochs, 0.85), 200 epochs,
  batch 8 (paper; code 16); the last epoch is reported (the code reports the best on test).
* N = 3 filters (paper; code 4); C1 = C (Tab. 9's best; code 2C); FSE's routing middle conv, which
  crashes in the code (no kernel size), is 3x3; the branch combination is the paper's gate by
  default (a per-pixel softmax over two logits of a 1x1 conv on both branches), the code's sum
  as ``mode="add"``.
* The foreground-dilated soft mask multiplies loss and score (code); optionally the background
  is put at each image's foreground minimum (``model.background="min"``) instead of 0.
* The outputs clip of ``+-1e6`` in the code's coupling is not reproduced (it breaks invertibility
  and is never reached with the clamp).
* Depth is resized to 8S from the reader's cloud size (the code resizes the native map to 192
  directly): one more bilinear resize when the cloud size is not 8S.

Ablations (paper Tables 5-11) by config: ``model.fusion`` (``cdcf``; ``none`` = Tab. 5 without
CDCF, ``concat(F_img, F_d)``; ``ca`` = Tab. 6 "CA", ``concat(F_img + CMA_S, F_d)``; ``concat`` =
Tab. 6 "concat", ``concat(F_img, F_d, F_pc)``; controls ``rgb`` = F_img alone and ``depth`` = F_d
alone), ``model.flow.subnet`` (``fse``; ``se``, ``cbam`` = Tab. 8; ``plain`` = Tab. 5 without FSE,
AST's ``conv -> ReLU -> conv``), ``model.flow.fse.{mode, dynamic, deformable, expand,
num_filters}`` (Tab. 8, 9, Fig. 7), ``model.cma.{loss, beta, arch, layers}`` (Tab. 6, 7, 10;
the KL and contrastive losses of Tab. 6 are not defined in the paper and not built),
``model.backbone.taps`` (Tab. 11).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxflow_ad.errors import ConfigError
from jaxflow_ad.flows.coupling import torch_default_bias_init, torch_default_kernel_init
from jaxflow_ad.flows.glow import CondGlowBlock
from jaxflow_ad.models.base import Method, Stage, State, eval_params
from jaxflow_ad.models.optim import torch_adam
from jaxflow_ad.nn.blocks import (
    CBAM,
    ConvTranspose2x2,
    SqueezeExcite,
    downsample2_bilinear,
    pixel_unshuffle,
    positional_encoding_2d,
    resize_bilinear,
)
from jaxflow_ad.nn.conv import conv2d

FUSIONS = ("cdcf", "none", "ca", "concat", "rgb", "depth")
NEEDS_CMA = ("cdcf", "ca")
NEEDS_POINTS = ("cdcf", "ca", "concat")
SUBNETS = ("fse", "se", "cbam", "plain")
CMA_LOSSES = ("cos+mse", "cos", "mse")
CMA_ARCHS = ("official", "paper")
LAYOUTS = ("mvtec3d", "eyecandies")
UNSHUFFLE = 8  # F_d = PixelUnshuffle(8)(depth at 8S): 64 channels


# ----------------------------------------------------------------------------- pure functions
def dilate(mask: jax.Array, size: int = 8) -> jax.Array:
    """``[B, H, W]`` binary dilation with a ``size x size`` square, as ``scipy.ndimage.binary_dilation``
    places an even kernel (AST's 8x8 foreground dilation at 8S): a pixel grows ``size // 2`` up and
    left and ``size // 2 - 1`` down and right. Outside counts as background."""
    lo, hi = (size - 1) - size // 2, size // 2
    return jax.lax.reduce_window(
        mask.astype(jnp.float32), -jnp.inf, jax.lax.max, (1, size, size), (1, 1, 1), ((0, 0), (lo, hi), (lo, hi))
    )


def soft_foreground(fg: jax.Array, s: int) -> tuple[jax.Array, jax.Array]:
    """The masks of MADFlow's losses and score from the reader's foreground ``[B, C, C]`` (bool):
    ``(fg8 [B, 8S, 8S], fgS [B, S, S])`` float32. At 8S the mask is resized (bilinear) and
    binarised (``> 0``, the reader's rule), dilated 8x8 (:func:`dilate`); ``fgS`` is its bilinear
    reduction to S, left soft (AST/MADFlow ``F.interpolate``: from 8S each output is the mean of
    source pixels 8i+3 and 8i+4 per axis)."""
    f = jnp.asarray(fg, jnp.float32)[..., None]
    f8 = (resize_bilinear(f, (UNSHUFFLE * s, UNSHUFFLE * s))[..., 0] > 0).astype(jnp.float32)
    f8 = dilate(f8, UNSHUFFLE)
    return f8, resize_bilinear(f8[..., None], (s, s))[..., 0]


def depth_features(depth: jax.Array, s: int) -> jax.Array:
    """F_d: the depth map ``[B, C, C]`` resized (bilinear) to 8S, then ``PixelUnshuffle(8)``:
    ``[B, S, S, 64]`` (channel ``i * 8 + j`` holds sub-pixel ``(i, j)``, torch's order)."""
    d = resize_bilinear(jnp.asarray(depth, jnp.float32)[..., None], (UNSHUFFLE * s, UNSHUFFLE * s))
    return pixel_unshuffle(d, UNSHUFFLE)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """torch ``F.normalize(x, dim=channels)``: ``x / max(||x||_2, eps)`` over the last axis."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def difference_map(f_hat: jax.Array, aligned: jax.Array) -> jax.Array:
    """CDCF's difference map (Eq. 5; code ``ano``): ``|| f_hat / ||f_hat|| - aligned / ||aligned|| ||_2``
    per pixel, ``[B, H, W]`` (0 where the two agree in direction, up to 2)."""
    return jnp.linalg.norm(l2_normalize(f_hat) - l2_normalize(aligned), axis=-1)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """``sum(mask * values) / max(sum(mask), 1)`` over everything (``values`` and ``mask`` alike)."""
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cma_loss(f_hat: jax.Array, aligned: jax.Array, mask: jax.Array, beta: float = 1.0, kind: str = "cos+mse"):
    """Stage 1 (Eq. 15 as the code computes it): over the pixels of ``mask`` ``[B, H, W]``,
    ``(1 - mean cos(f_hat, aligned)) + beta * mean (f_hat - aligned)^2`` (the MSE over pixels and
    channels); ``kind`` keeps one term (Tab. 6). Returns ``(loss, {"one_minus_cos": .., "mse": ..})``."""
    cos = jnp.sum(l2_normalize(f_hat, 1e-8) * l2_normalize(aligned, 1e-8), axis=-1)
    cos_term = 1.0 - masked_mean(cos, mask)
    mse = masked_mean(jnp.mean((f_hat - aligned) ** 2, axis=-1), mask)
    if kind == "cos+mse":
        loss = cos_term + beta * mse
    elif kind == "cos":
        loss = cos_term
    elif kind == "mse":
        loss = mse
    else:
        raise ConfigError(f"config key model.cma.loss={kind!r}: use one of {CMA_LOSSES}")
    return loss, {"one_minus_cos": cos_term, "mse": mse}


def pixel_nll(z: jax.Array, logdet_map: jax.Array) -> jax.Array:
    """``0.5 ||z||^2 - logdet`` per pixel, ``[B, H, W]`` (the constant ``C/2 log 2 pi`` left out)."""
    return 0.5 * jnp.sum(z * z, axis=-1) - logdet_map


def flow_nll(z: jax.Array, logdet_map: jax.Array, fg: jax.Array) -> jax.Array:
    """Eq. 17 (code ``train.py``): the mean over batch and pixels of ``fg * (0.5 ||z||^2 - logdet)``,
    not divided by the channel count."""
    return jnp.mean(fg * pixel_nll(z, logdet_map))


def score_map(z: jax.Array, logdet_map: jax.Array, fg: jax.Array, background: str = "zero") -> jax.Array:
    """The anomaly map at S: ``fg * (0.5 ||z||^2 - logdet)``; with ``background="min"`` the pixels
    outside the foreground (``fg == 0``) take the image's smallest foreground value instead of 0."""
    m = fg * pixel_nll(z, logdet_map)
    if background == "min":
        inside = fg > 0
        low = jnp.min(jnp.where(inside, m, jnp.inf), axis=(1, 2), keepdims=True)
        low = jnp.where(jnp.isfinite(low), low, 0.0)
        m = jnp.where(inside, m, low)
    elif background != "zero":
        raise ConfigError(f"config key model.background={background!r}: use 'zero' or 'min'")
    return m


def step_lr(lr: float, steps_per_epoch: int, every_epochs: int, gamma: float) -> optax.Schedule:
    """torch ``StepLR(step_size=every_epochs, gamma)`` stepped once per epoch, as a schedule of the update count."""
    return optax.exponential_decay(lr, max(1, every_epochs * steps_per_epoch), gamma, staircase=True)


# ----------------------------------------------------------------------------- CMA
def cma_plan(
    arch: str,
    in_channels: int,
    out_channels: int,
    *,
    layers: int = 4,
    width_scale: float = 1.0,
    upsamples: int = 3,
    final_relu: bool = True,
) -> tuple[tuple[str, int, bool], ...]:
    """The CMA as ``(kind, width, relu)`` steps, ``kind`` ``"conv"`` (3x3, zero padding 1) or ``"up"``
    (2x2 stride-2 transposed conv).

    ``"official"``: the code's ``FeatureProjectionConv(1152 -> 608)``, its hidden widths times
    ``width_scale``, keeping the first ``upsamples`` of its three x2 stages (a CPU-sized
    network; the output is upsampled bilinearly to 8S where it is compared). ``"paper"``: ``layers``
    3x3 convs each followed by ReLU at S, widths stepping linearly from ``in_channels`` to
    ``out_channels``. ``final_relu``: the ReLU after the last conv (both: the code has it)."""
    if arch == "official":
        if not 0 <= upsamples <= 3:
            raise ConfigError(f"config key model.cma.upsamples={upsamples}: 0 to 3 (the code has 3)")
        w = lambda c: max(1, int(round(c * width_scale)))
        ups = [("up", w(128), False), ("up", w(512), False), ("up", out_channels, False)][:upsamples]
        steps = [("conv", w(880), True), ("conv", w(440), True)]
        steps += ups[:1] + [("conv", w(256), True)] + ups[1:] + [("conv", out_channels, final_relu)]
        return tuple(steps)
    if arch == "paper":
        if layers < 1:
            raise ConfigError(f"config key model.cma.layers={layers}: at least 1")
        widths = [int(round(in_channels + (out_channels - in_channels) * (i + 1) / layers)) for i in range(layers)]
        return tuple(("conv", c, i < layers - 1 or final_relu) for i, c in enumerate(widths))
    raise ConfigError(f"config key model.cma.arch={arch!r}: use one of {CMA_ARCHS}")


class CMA(nn.Module):
    """The cross-modal alignment network: point features ``[B, S, S, 1152]`` -> image-feature space,
    following a :func:`cma_plan`. PyTorch's default initialisation."""

    plan: tuple[tuple[str, int, bool], ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, (kind, width, relu) in enumerate(self.plan):
            if kind == "conv":
                x = nn.Conv(
                    width,
                    (3, 3),
                    padding=1,
                    kernel_init=torch_default_kernel_init,
                    bias_init=torch_default_bias_init(9 * x.shape[-1]),
                    name=f"conv_{i}",
                )(x)
            else:
                x = ConvTranspose2x2(width, name=f"up_{i}")(x)
            if relu:
                x = nn.relu(x)
        return x


# ----------------------------------------------------------------------------- FSFlow
class ReplicateConv(nn.Module):
    """``Conv2d(k, padding=k // 2, padding_mode="replicate")`` with a bias, PyTorch's default init."""

    features: int
    ksize: int
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, p = self.ksize, self.ksize // 2
        fan_in = k * k * x.shape[-1]
        w = self.param("kernel", torch_default_kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
        b = self.param("bias", torch_default_bias_init(fan_in), (self.features,))
        xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
        return conv2d(xp, w, 1, ((0, 0), (0, 0)), self.conv_impl) + b


class FSFlowSubnet(nn.Module):
    """The coupling subnet of FSFlow (code ``F_conv_attention``): ``conv k -> attention -> ReLU -> conv k``,
    times a scalar ``gamma`` initialised to 0 (a fresh coupling is the identity).

    ``attention``: ``"fse"`` FSE then SE(16) (the code); ``"se"`` SE alone; ``"cbam"`` CBAM then
    SE (Tab. 8's SE / CBAM rows replace FSE); ``"plain"`` none (AST's subnet, Tab. 5 without FSE).
    Called with the condition (positional encoding) already concatenated to the input.
    """

    out_channels: int
    hidden: int = 64
    ksize: int = 3
    attention: str = "fse"
    fse: tuple = ()  # FSE keyword arguments as (name, value) pairs (hashable)
    se_reduction: int = 16
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        h = ReplicateConv(self.hidden, self.ksize, self.conv_impl, name="conv_in")(x)
        if self.attention == "fse":
            from jaxflow_ad.nn.fse import FSE

            h = FSE(**dict(self.fse), name="fse")(h)
        elif self.attention == "cbam":
            h = CBAM(name="cbam")(h)
        elif self.attention not in ("se", "plain"):
            raise ConfigError(f"config key model.flow.subnet={self.attention!r}: use one of {SUBNETS}")
        if self.attention != "plain":
            h = SqueezeExcite(self.se_reduction, name="se")(h)
        h = nn.relu(h)
        o = ReplicateConv(self.out_channels, self.ksize, self.conv_impl, name="conv_out")(h)
        return o * self.param("gamma", nn.initializers.zeros, ())


@dataclasses.dataclass(frozen=True)
class FSFlow:
    """FSFlow as pure functions of its parameters ``{"block_0": .., ...}``: ``forward_map(params, x)
    -> (z, logdet_map [B, S, S])`` with the positional encoding as every subnet's condition."""

    channels: int
    kernels: tuple[int, ...] = (3, 3, 3, 5)
    hidden: int = 64
    clamp: float = 1.9
    pe_channels: int = 32
    attention: str = "fse"
    fse: tuple = ()
    conv_impl: str = "xla"

    @functools.cached_property
    def layers(self) -> tuple[CondGlowBlock, ...]:
        return tuple(
            CondGlowBlock(
                self.channels,
                subnet=functools.partial(
                    FSFlowSubnet,
                    hidden=self.hidden,
                    ksize=k,
                    attention=self.attention,
                    fse=self.fse,
                    conv_impl=self.conv_impl,
                ),
                clamp=self.clamp,
                seed=i,
            )
            for i, k in enumerate(self.kernels)
        )

    @property
    def names(self) -> list[str]:
        return [f"block_{i}" for i in range(len(self.kernels))]

    def condition(self, x: jax.Array) -> jax.Array:
        pe = positional_encoding_2d(self.pe_channels, x.shape[1], x.shape[2])
        return jnp.broadcast_to(jnp.asarray(pe, x.dtype)[None], (x.shape[0], *pe.shape))

    def init(self, rng: jax.Array, x: jax.Array) -> dict:
        cond = self.condition(x)
        keys = jax.random.split(rng, len(self.layers))
        params = {}
        for n, layer, k in zip(self.names, self.layers, keys):
            params[n] = layer.init(k, x, cond, method=layer.forward_map)["params"]
            x, _ = layer.apply({"params": params[n]}, x, cond, method=layer.forward_map)
        return params

    def forward_map(self, params: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        cond = self.condition(x)
        logdet = jnp.zeros(x.shape[:3], x.dtype)
        for n, layer in zip(self.names, self.layers):
            x, ld = layer.apply({"params": params[n]}, x, cond, method=layer.forward_map)
            logdet = logdet + ld
        return x, logdet

    def inverse_map(self, params: dict, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        cond = self.condition(z)
        logdet = jnp.zeros(z.shape[:3], z.dtype)
        for n, layer in reversed(list(zip(self.names, self.layers))):
            z, ld = layer.apply({"params": params[n]}, z, cond, method=layer.inverse_map)
            logdet = logdet + ld
        return z, logdet


# ----------------------------------------------------------------------------- frozen features
def _as_is(inputs):
    """The multimodal extractor takes the reader's arrays as they are (its network normalises)."""
    return inputs


@dataclasses.dataclass(frozen=True)
class MADFlowFeatures:
    """MADFlow's frozen networks as one function of a sample dict (the ``module`` of a
    :class:`~jaxflow_ad.backbones.FrozenExtractor` with ``modality=("image", "xyz", "depth",
    "foreground")``): ``apply(variables, inputs) -> {"rgb", "points"?, "depth", "fg8", "fgS"}``,
    each ``[B, h, w, c]``. ``variables = {"image": .., "points": ..}``.

    Attributes:
      image_net: the image backbone (returns ``{tap: [B, h, w, c]}``); mean/std its normalisation.
      image_taps: concatenated at the deepest tap's size S; shallower taps must be at 2S and are
        halved by the 2x2 mean (torch's bilinear ``scale_factor=0.5``).
      point_net: the Point-MAE encoder, or None when the fusion reads no point features.
    """

    image_net: nn.Module
    image_taps: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    point_net: nn.Module | None = None

    def image_features(self, variables, image: jax.Array) -> jax.Array:
        x = jnp.asarray(image, jnp.float32)
        if image.dtype == jnp.uint8:
            x = x * jnp.float32(1.0 / 255.0)
        x = (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
        out = self.image_net.apply(variables, x)
        feats = [out[t] for t in self.image_taps]
        s = min(f.shape[1] for f in feats)
        parts = []
        for t, f in zip(self.image_taps, feats):
            if f.shape[1] == 2 * s and f.shape[2] == 2 * s:
                f = downsample2_bilinear(f)
            elif f.shape[1:3] != (s, s):
                raise ConfigError(
                    f"config key model.backbone.taps: tap {t} is {f.shape[1]}x{f.shape[2]}, neither the deepest "
                    f"tap's {s}x{s} nor twice it; MADFlow concatenates taps at strides s and s/2 only"
                )
            parts.append(f)
        return jnp.concatenate(parts, axis=-1)

    def point_features(self, variables, xyz: jax.Array, s: int) -> jax.Array:
        from jaxflow_ad.backbones.pointmae import cloud_feature_map

        fn = lambda cloud: cloud_feature_map(self.point_net, variables, cloud, size=s)["pooled"]
        return jax.lax.map(fn, jnp.asarray(xyz, jnp.float32))

    def apply(self, variables, inputs) -> dict[str, jax.Array]:
        rgb = self.image_features(variables["image"], inputs["image"])
        s = rgb.shape[1]
        fg8, fg_s = soft_foreground(inputs["foreground"], s)
        out = {
            "rgb": rgb,
            "depth": depth_features(inputs["depth"], s),
            "fg8": fg8[..., None],
            "fgS": fg_s[..., None],
        }
        if self.point_net is not None:
            out["points"] = self.point_features(variables["points"], inputs["xyz"], s)
        return out


def load_features(config: ml_collections.ConfigDict, need_points: bool):
    """The multimodal :class:`~jaxflow_ad.backbones.FrozenExtractor` of ``config.model``: the image
    backbone (``model.backbone``; offline: the Lite0 stand-in, its note kept) and, when
    ``need_points``, Point-MAE (``model.points``: converted weights or ``random_init``)."""
    from jaxflow_ad.backbones import FrozenExtractor, load_backbone
    from jaxflow_ad.backbones.extractor import check_required_weights
    from jaxflow_ad.backbones.weights import WeightsError

    b = config.model.backbone
    taps = tuple(str(t) for t in b.taps)
    if not taps:
        raise ConfigError(
            "config key model.backbone.taps is empty: name the image taps (B5: block19, block26, block35)"
        )
    check_required_weights(b)
    p = config.model.points
    if need_points and p.get("require_weights") and not p.get("weights"):
        raise WeightsError(
            "this config needs the Point-MAE weights (config key model.points.weights is empty). Convert them "
            "once with `python -m third_party.convert --arch pointmae --src pointmae_pretrain.pth --dst "
            "weights/pointmae` and pass --config.model.points.weights=weights/pointmae.msgpack"
        )
    image = load_backbone(
        {
            "arch": str(b.arch),
            "weights": b.get("weights") or None,
            "random_init": bool(b.get("random_init", False)),
            "padding": str(b.get("padding", "static")),
            "static_size": int(b.get("static_size", 0)) or None,
            "taps": taps,
        }
    )
    notes = [image.note] if image.note and not b.get("weights") else []  # the stand-in or random weights
    variables = {"image": image.variables}
    point_net = None
    if need_points:
        p = config.model.points
        points = load_backbone(
            {
                "arch": "pointmae",
                "weights": p.get("weights") or None,
                "random_init": not p.get("weights"),
                "num_group": int(p.num_group),
                "group_size": int(p.group_size),
            }
        )
        if not p.get("weights"):
            notes.append(
                "pointmae: RANDOM weights (config key model.points.weights is empty; no offline Point-MAE "
                "checkpoint): the point features are those of an untrained encoder"
            )
        variables["points"] = points.variables
        point_net = points.module
    module = MADFlowFeatures(image.module, taps, tuple(image.mean), tuple(image.std), point_net)
    return FrozenExtractor(
        module=module,
        variables=variables,
        taps=("rgb", "depth", "fg8", "fgS") + (("points",) if need_points else ()),
        name=f"madflow[{image.arch}{'+pointmae' if need_points else ''}]",
        modality=("image", "xyz", "depth", "foreground"),
        preprocess=_as_is,
        note="; ".join(notes),
    )


# ----------------------------------------------------------------------------- the method
class MADFlow(Method):
    """MADFlow for the engine (see :mod:`jaxflow_ad.models.base`).

    ``params = {"cma": .., "flow": {"block_0": ..}}`` (no ``cma`` when the fusion does not use
    it); stages ``cma`` (trains ``("cma",)``) and ``flow`` (trains ``("flow",)``; the CMA's
    difference maps come from ``Stage.derive``). Batches carry ``features`` from the frozen
    multimodal extractor only.
    """

    name = "madflow"

    @classmethod
    def configure(cls, config: ml_collections.ConfigDict, category: str) -> ml_collections.ConfigDict:
        """The depth branch is switched on for the reader; MVTec 3D-AD's tire keeps its depth in metres
        (the code's ``scale=1`` for tire: ``model.depth_scale = 0.01`` undoes the reader's x 100)."""
        layout = str(config.data.layout)
        if layout not in LAYOUTS:
            raise ConfigError(
                f"config key data.layout={layout!r}: MADFlow reads RGB + point clouds; use one of {LAYOUTS} "
                "(data.root='' with mvtec3d = the built-in multimodal set)"
            )
        config.data[layout].depth = True
        if category == "tire" and config.model.get("tire_depth_in_metres", True):
            config.model.depth_scale = 0.01
        return super().configure(config, category)

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        m, t = config.model, config.train
        self.fusion = str(m.fusion)
        if self.fusion not in FUSIONS:
            raise ConfigError(f"config key model.fusion={self.fusion!r}: use one of {FUSIONS}")
        f = m.flow
        if str(f.subnet) not in SUBNETS:
            raise ConfigError(f"config key model.flow.subnet={f.subnet!r}: use one of {SUBNETS}")
        if str(m.cma.loss) not in CMA_LOSSES:
            raise ConfigError(
                f"config key model.cma.loss={m.cma.loss!r}: use one of {CMA_LOSSES} (Tab. 6's KL and contrastive "
                "losses are not defined in the paper)"
            )
        if str(m.get("background", "zero")) not in ("zero", "min"):
            raise ConfigError(f"config key model.background={m.background!r}: use 'zero' or 'min'")
        self.uses_cma = self.fusion in NEEDS_CMA
        self.extractor = load_features(config, need_points=self.fusion in NEEDS_POINTS)
        shapes = self.extractor.output_shapes_like(self.example_inputs(config))
        self.s = shapes["rgb"][1]
        c_img, c_pc = shapes["rgb"][-1], shapes.get("points", (0,))[-1]
        c_d = shapes["depth"][-1]
        self.channels = {
            "cdcf": c_img + c_d,
            "none": c_img + c_d,
            "ca": c_img + c_d,
            "concat": c_img + c_d + c_pc,
            "rgb": c_img,
            "depth": c_d,
        }[self.fusion]
        if self.channels < 2:
            raise ConfigError(f"model.fusion={self.fusion!r} gives {self.channels} channel(s); a coupling needs 2")
        self.cma = None
        if self.uses_cma:
            c = m.cma
            if str(c.arch) not in CMA_ARCHS:
                raise ConfigError(f"config key model.cma.arch={c.arch!r}: use one of {CMA_ARCHS}")
            self.cma = CMA(
                cma_plan(
                    str(c.arch),
                    c_pc,
                    c_img,
                    layers=int(c.layers),
                    width_scale=float(c.width_scale),
                    upsamples=int(c.upsamples),
                    final_relu=bool(c.final_relu),
                )
            )
        fse = f.fse
        fse_kwargs = (
            ("expand", float(fse.expand)),
            ("num_filters", int(fse.num_filters)),
            ("mode", str(fse.mode)),
            ("dynamic", bool(fse.dynamic)),
            ("deformable", bool(fse.deformable)),
        )
        kernels = tuple(int(k) for k in f.kernels)
        if len(kernels) < 1:
            raise ConfigError("config key model.flow.kernels is empty: one kernel size per block (paper: 3, 3, 3, 5)")
        self.flow = FSFlow(
            self.channels,
            kernels=kernels,
            hidden=int(f.hidden),
            clamp=float(f.clamp),
            pe_channels=int(f.pe_channels),
            attention=str(f.subnet),
            fse=fse_kwargs,
            conv_impl=str(f.get("conv_impl", "xla")),
        )
        stages = []
        if self.uses_cma:
            o = t.cma_optimizer
            stages.append(
                Stage(
                    "cma",
                    int(t.cma_epochs),
                    self.cma_stage_loss,
                    lambda spe, o=o: self._adam(o, spe),
                    trainable=("cma",),
                    prepare_batch=self.prepare_batch,
                    batch_size=int(t.cma_batch_size) or None,
                    learning_rate=lambda spe, o=o: step_lr(float(o.lr), spe, int(o.step_epochs), float(o.gamma)),
                )
            )
        o = t.flow_optimizer
        stages.append(
            Stage(
                "flow",
                int(t.flow_epochs),
                self.flow_stage_loss,
                lambda spe, o=o: self._adam(o, spe),
                trainable=("flow",),
                prepare_batch=self.prepare_batch,
                learning_rate=lambda spe, o=o: step_lr(float(o.lr), spe, int(o.step_epochs), float(o.gamma)),
                derive=self.difference_maps if self.fusion == "cdcf" and m.get("cache_differences", True) else None,
            )
        )
        self.stages = tuple(stages)

    # -------------------------------------------------------------- helpers
    @staticmethod
    def _adam(o, steps_per_epoch: int) -> optax.GradientTransformation:
        """PyTorch ``Adam(lr, eps, weight_decay)`` (coupled L2) under ``StepLR(step_epochs, gamma)``."""
        schedule = step_lr(float(o.lr), steps_per_epoch, int(o.step_epochs), float(o.gamma))
        return torch_adam(schedule, eps=float(o.eps), weight_decay=float(o.weight_decay))

    @staticmethod
    def example_inputs(config) -> dict:
        size = int(config.data.image_size)
        opts = config.data[str(config.data.layout)]
        c = int(opts.get("cloud_size", 0)) or size
        return {
            "image": jax.ShapeDtypeStruct((1, size, size, 3), jnp.uint8),
            "xyz": jax.ShapeDtypeStruct((1, c, c, 3), jnp.float32),
            "depth": jax.ShapeDtypeStruct((1, c, c), jnp.float32),
            "foreground": jax.ShapeDtypeStruct((1, c, c), jnp.bool_),
        }

    def prepare_batch(self, batch: dict, rng: np.random.Generator) -> dict:
        """Host side: no augmentation (the paper uses none); only the features (and the cached
        difference maps) go to the devices."""
        del rng
        out = {"features": batch["features"]}
        if "derived" in batch:
            out["derived"] = batch["derived"]
        return out

    def _feats(self, batch) -> dict[str, jax.Array]:
        f = batch["features"]
        out = {k: jax.lax.stop_gradient(jnp.asarray(f[k], jnp.float32)) for k in f}
        out["depth"] = out["depth"] * float(self.config.model.get("depth_scale", 1.0))
        return out

    def aligned(self, cma_params, feats) -> tuple[jax.Array, jax.Array]:
        """``(F^, CMA(F_pc))`` both at 8S: the image features upsampled bilinearly, the CMA output
        upsampled bilinearly when it ends below 8S."""
        size = (UNSHUFFLE * self.s, UNSHUFFLE * self.s)
        f_hat = resize_bilinear(feats["rgb"], size)
        out = self.cma.apply({"params": cma_params}, feats["points"])
        return f_hat, resize_bilinear(out, size)

    def difference_maps(self, state: State, batch) -> dict:
        """``{"ano": [B, 8S, 8S]}`` of the frozen CMA (the flow stage's ``Stage.derive``)."""
        feats = self._feats(batch)
        return {"ano": difference_map(*self.aligned(state.params["cma"], feats))}

    def fusion_input(self, params, batch) -> jax.Array:
        """The flow's input ``[B, S, S, C]`` for ``model.fusion`` (CDCF: ``concat(F_img, F_d + U8(ano))``)."""
        feats = self._feats(batch)
        rgb, depth = feats["rgb"], feats["depth"]
        if self.fusion == "rgb":
            return rgb
        if self.fusion == "depth":
            return depth
        if self.fusion == "none":
            return jnp.concatenate([rgb, depth], axis=-1)
        if self.fusion == "concat":
            return jnp.concatenate([rgb, depth, feats["points"]], axis=-1)
        cma_params = jax.lax.stop_gradient(params["cma"])
        if self.fusion == "ca":
            out = self.cma.apply({"params": cma_params}, feats["points"])
            return jnp.concatenate([rgb + resize_bilinear(out, (self.s, self.s)), depth], axis=-1)
        if "derived" in batch:
            ano = jax.lax.stop_gradient(jnp.asarray(batch["derived"]["ano"], jnp.float32))
        else:
            ano = jax.lax.stop_gradient(difference_map(*self.aligned(cma_params, feats)))
        return jnp.concatenate([rgb, depth + pixel_unshuffle(ano[..., None], UNSHUFFLE)], axis=-1)

    # -------------------------------------------------------------- training
    def init(self, rng: jax.Array, example_batch) -> State:
        k_cma, k_flow = jax.random.split(rng)
        feats = {k: jnp.zeros(np.shape(v), jnp.float32) for k, v in example_batch["features"].items()}
        params = {}
        if self.uses_cma:
            params["cma"] = self.cma.init(k_cma, feats["points"])["params"]
        x = jnp.zeros(feats["rgb"].shape[:3] + (self.channels,), jnp.float32)
        params["flow"] = self.flow.init(k_flow, x)
        return State(step=jnp.zeros((), jnp.int32), params=params, model_state={}, opt_state=(), stats={})

    def cma_stage_loss(self, params, state: State, batch, rng):
        """Stage 1: :func:`cma_loss` over the dilated foreground at 8S."""
        del rng
        feats = self._feats(batch)
        f_hat, out = self.aligned(params["cma"], feats)
        c = self.config.model.cma
        loss, aux = cma_loss(f_hat, out, feats["fg8"][..., 0], float(c.beta), str(c.loss))
        return loss, (aux, state.model_state)

    def flow_stage_loss(self, params, state: State, batch, rng):
        """Stage 2: :func:`flow_nll` of FSFlow on the fused features, the CMA frozen."""
        del rng
        x = self.fusion_input(params, batch)
        z, logdet = self.flow.forward_map(params["flow"], x)
        fg = self._feats(batch)["fgS"][..., 0]
        loss = flow_nll(z, logdet, fg)
        aux = {"z_sq": masked_mean(jnp.mean(z * z, axis=-1), fg), "logdet_per_dim": jnp.mean(logdet) / x.shape[-1]}
        return loss, (aux, state.model_state)

    # -------------------------------------------------------------- scoring
    def feature_map(self, state: State, batch) -> jax.Array:
        """The anomaly map at S, ``[B, S, S]`` (:func:`score_map`)."""
        params = eval_params(state)
        x = self.fusion_input(params, {"features": batch["features"]})
        z, logdet = self.flow.forward_map(params["flow"], x)
        fg = self._feats(batch)["fgS"][..., 0]
        return score_map(z, logdet, fg, str(self.config.model.get("background", "zero")))

    def score(self, state: State, batch, rng: jax.Array):
        """``(maps [B, H, W], scores [B])``: the map at S upsampled bilinearly to the image size, and
        the maximum of the map at S (the code's image score). Deterministic (``rng`` unused)."""
        del rng
        m = self.feature_map(state, batch)
        size = tuple(batch["image"].shape[1:3])
        maps = jax.image.resize(m, (m.shape[0], *size), "bilinear")
        return maps, jnp.max(m, axis=(1, 2))


def count_parameters(tree) -> int:
    """Number of scalars in a parameter tree (Tab. 4's parameter count)."""
    return int(sum(np.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(tree)))


__all__: Sequence[str] = (
    "MADFlow",
    "MADFlowFeatures",
    "CMA",
    "FSFlow",
    "FSFlowSubnet",
    "cma_plan",
    "cma_loss",
    "difference_map",
    "flow_nll",
    "score_map",
    "soft_foreground",
    "depth_features",
    "dilate",
    "resize_bilinear",
    "count_parameters",
)
