"""NF-BMR (Zhang, Kan, Cen, Chen, Zhang, Huang; CMC 78(2), 2024): a normalizing flow as the target
domain of a bidirectional mapping residual network.

No official code is public; this is written from the paper (Sec. 3-4) with the
choices below, after its baselines B-PFM (Wan et al., TII 2022), CS-Flow and AST.

Pipeline (paper Fig. 3):

1. Source domain (Eq. 1): ``y = SNN(x)``, the frozen ImageNet EfficientNet-B5's
   "36th layer" at 768x768: ``block35`` (0-based; the end of the 304-channel
   stage, 24x24), with ``efficientnet_pytorch``'s static padding. A
   :class:`~jaxflow_ad.backbones.FrozenExtractor`: the engine computes the
   features once per split and caches them (``batch["features"][tap]``).
2. Target domain (Eq. 2-8): ``z = TNF(y)``, four
   :class:`~jaxflow_ad.flows.glow.GlowBlock` s (a seeded channel permutation,
   seeds 0..3, then two affine couplings; subnet ``conv3x3 -> ReLU -> conv3x3``
   with 1024 hidden channels; AST's soft clamp 1.9). Each block is::

       y1, y2 = split(y)                        (Eq. 3)
       z2 = exp(s1(y1)) * y2 + b1(y1)           (Eq. 4)
       z1 = exp(s2(z2)) * y1 + b2(z2)           (Eq. 5, GLOW order: see below)
       z  = concat(z1, z2)                      (Eq. 6)

   Stage ``flow`` trains it alone by Eq. 8, ``L_nf = ||z||^2 / 2 - log|det dz/dy|``
   (:func:`~jaxflow_ad.flows.glow.nfbmr_nll`), divided by ``h * w * c`` by
   default (``model.flow.divide_nll``).
3. Stage ``mapping`` trains the BMR with the backbone and the flow frozen:
   ``z_MT = TMNN(y)`` (Eq. 9), ``y_MS = SMNN(z)`` (Eq. 10), loss
   ``mean((y - y_MS)^2) + mean((z - z_MT)^2)`` (Eq. 11-13,
   :func:`~jaxflow_ad.nn.mapping.mapping_loss`).
4. Anomaly map (Eq. 14): ``ASM(i, j) = (||y(i,j) - y_MS(i,j)||^2 + ||z(i,j) - z_MT(i,j)||^2) / 2``
   (:func:`~jaxflow_ad.nn.mapping.mapping_anomaly_map`), bilinearly upsampled to
   the image size; image score: its maximum.

Where the paper is silent or wrong, and the choice made:

* Eq. 5 as printed conditions the second coupling on the *untransformed*
  ``y2``; that map has no closed-form inverse and its log-determinant is not
  ``sum(s1) + sum(s2)``. The GLOW/Real-NVP order (condition on ``z2``) is
  implemented, as in AST and FrEIA (:class:`~jaxflow_ad.flows.glow.GlowBlock`).
* The "random, fixed arrangement" of channels: a seeded permutation in front of
  every block, seed = block index (AST).
* What the shared block shares: one whole bottleneck residual block
  (``1x1 -> 3x3 -> 1x1``, ReLU after each) in the middle of both mapping
  networks, one parameter subtree ``params["mapping"]["shared"]`` trained by both
  losses (:class:`~jaxflow_ad.nn.mapping.BidirectionalMapping`; B-PFM shares one
  1x1 conv). Conv-in/out are linear 1x1 convs, the bottleneck is ``width // 4``;
  ``width`` is the paper's ``c_latent`` (1024).
* L2 normalisation over channels (B-PFM normalises both feature sets; the
  paper's Eq. 11-14 use ``y`` and ``z`` as they are): off by default;
  ``model.l2_normalize=True`` normalises ``y`` and ``z`` once, outside the
  mapping module (the flow still sees the raw ``y``), and the normalised ones
  enter both the loss and the map.
* ``z`` in stage 2 comes from the cache (``model.cache_flow_outputs``, on by
  default): the flow is frozen by then, so the engine computes ``TNF(y)`` once
  over the training split when the stage starts (:attr:`Stage.derive
  <jaxflow_ad.models.base.Stage.derive>`) and every step reads
  ``batch["derived"]["z"]``. Off, or with an augmentation configured (the cache
  holds the unaugmented split), ``z = stop_gradient(TNF(y))`` is recomputed in
  every loss evaluation; both give the same loss (a test).
* The batch reduction of Eq. 8 and Eq. 11-13: the mean.
* Optimiser: Adam with *coupled* L2 weight decay (PyTorch ``Adam(weight_decay=)``:
  ``optax.add_decayed_weights`` before ``scale_by_adam``), PyTorch's default
  betas and eps; lr 2e-4 (flow) and 3e-4 (mapping), decay 1e-5, batch 8, 300
  epochs each (paper Sec. 4.2). No gradient clipping, no schedule.
* The upsampling of the 24x24 map to the image: bilinear
  (``jax.image.resize``, half-pixel centres), as B-PFM; no Gaussian smoothing.
* The image score: the maximum of the upsampled map (B-PFM).
* Precision, recall and F1 (Tables 2 and 4) are reported at a threshold the
  paper does not state. Chosen here on normal images only: the 0.99 quantile of
  the scores of 10% of train/good kept out of training
  (``eval.threshold.holdout``, ``eval.threshold.quantile``; the engine's
  :func:`~jaxflow_ad.engine.loop.fit_threshold`). Choosing it on the test set
  (as an F1-optimal threshold does, our ``image_f1_max``) would flatter it.
* No augmentation (paper Sec. 4.3: "without any data augmentation").
* The model of the last epoch is evaluated: no checkpoint selection on the
  test set (several baselines report the best epoch on the test set).

Ablations of Table 5, by config: ``model.bmr.blocks`` (``n`` = 1, 2, 3);
``model.mapper="bpfm"`` (NF + B-PFM: :class:`~jaxflow_ad.nn.mapping.DualProjection`
with latent ``model.bpfm.latent`` and BatchNorm, whose running statistics live
in ``state.model_state["batch_stats"]`` and are updated by the stage-2 loss);
``model.score="flow_only"`` (NF alone: per pixel ``||z||^2 / 2`` summed over
channels, upsampled; no second stage and no mapping parameters).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxflow_ad.errors import ConfigError
from jaxflow_ad.flows.glow import GlowBlock, nfbmr_nll
from jaxflow_ad.flows.reversible import chain_forward
from jaxflow_ad.models.base import Method, Stage, State, eval_params
from jaxflow_ad.models.optim import torch_adam
from jaxflow_ad.nn.mapping import (
    BidirectionalMapping,
    DualProjection,
    l2_normalize_channels,
    mapping_anomaly_map,
    mapping_terms,
)

MAPPERS = ("bmr", "bpfm")
SCORES = ("mapping", "flow_only")


def flow_only_map(z: jax.Array) -> jax.Array:
    """Table 5's "NF" row: ``||z(i, j)||^2 / 2`` per pixel (summed over channels), ``[B, h, w]``."""
    return 0.5 * jnp.sum(z * z, axis=-1)


def upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``[B, h, w]`` -> ``[B, H, W]``, bilinear with half-pixel centres (``jax.image.resize``)."""
    return jax.image.resize(maps, (maps.shape[0], *size), "bilinear")


def adam_l2(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """PyTorch ``Adam(lr, betas, eps, weight_decay)`` (coupled L2, :func:`~jaxflow_ad.models.optim.torch_adam`),
    optionally after clipping the global gradient norm (``clip_norm > 0``)."""
    clip = float(cfg.get("clip_norm", 0.0))
    return torch_adam(
        cfg.lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, clip_norm=clip if clip > 0 else None
    )


def load_source(b: ml_collections.ConfigDict):
    """The frozen source network (SNN) as a :class:`~jaxflow_ad.backbones.FrozenExtractor` with one tap.

    ``b`` is ``model.backbone``: ``arch``, ``tap``, ``weights`` (a converted
    ``.msgpack``; empty: the offline EfficientNet-Lite0 stand-in, its tap renamed
    to ``tap``, said in the extractor's note), ``padding``/``static_size`` (0: the
    architecture's native resolution, 456 for B5), ``random_init`` (smoke tests)
    and ``require_weights`` (the paper variant: refuse the stand-in).
    """
    from jaxflow_ad.backbones import FrozenExtractor

    return FrozenExtractor.from_backbone_config(b, taps=(b.tap,))


@dataclasses.dataclass(frozen=True)
class TargetFlow:
    """The TNF as pure functions over its parameters ``{"block_0": ..., ...}``."""

    channels: int
    blocks: int = 4
    hidden: int = 1024
    ksize: int = 3
    clamp: float = 1.9
    use_bias: bool = True
    conv_impl: str = "xla"

    @functools.cached_property
    def layers(self) -> tuple[GlowBlock, ...]:
        return tuple(
            GlowBlock(
                self.channels,
                hidden=self.hidden,
                ksize=self.ksize,
                clamp=self.clamp,
                seed=i,
                use_bias=self.use_bias,
                conv_impl=self.conv_impl,
            )
            for i in range(self.blocks)
        )

    @property
    def names(self) -> list[str]:
        return [f"block_{i}" for i in range(self.blocks)]

    def init(self, rng: jax.Array, y: jax.Array) -> dict:
        keys = jax.random.split(rng, self.blocks)
        return {
            n: layer.init(k, y, method=layer.forward)["params"] for n, layer, k in zip(self.names, self.layers, keys)
        }

    def forward(self, params: dict, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(z, logdet [B])``; the blocks have no running statistics, so training and evaluation agree."""
        z, logdet, _ = chain_forward(self.layers, [{"params": params[n]} for n in self.names], y)
        return z, logdet


class NFBMR(Method):
    """NF-BMR for the engine (see :mod:`jaxflow_ad.models.base`).

    ``params = {"flow": {"block_0": ..}, "mapping": {"tmnn", "smnn", "shared"}}`` (no
    ``mapping`` with ``model.score="flow_only"``); ``model_state = {"batch_stats": ..}`` for
    the B-PFM mapper, else ``{}``. Stages ``flow`` (trains ``("flow",)``) and ``mapping``
    (trains ``("mapping",)``); the loss reads ``batch["features"][tap]`` only.
    """

    name = "nfbmr"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        m, t = config.model, config.train
        if m.mapper not in MAPPERS:
            raise ConfigError(f"unknown model.mapper {m.mapper!r}; use one of {MAPPERS}")
        if m.score not in SCORES:
            raise ConfigError(f"unknown model.score {m.score!r}; use one of {SCORES}")
        self.extractor = load_source(m.backbone)
        (self.tap,) = self.extractor.taps
        channels = self.extractor.output_shapes((1, 64, 64, 3))[self.tap][-1]
        f = m.flow
        self.flow = TargetFlow(
            channels,
            blocks=int(f.blocks),
            hidden=int(f.hidden),
            ksize=int(f.ksize),
            clamp=float(f.clamp),
            use_bias=bool(f.get("use_bias", True)),
            conv_impl=str(f.get("conv_impl", "xla")),
        )
        self.flow_only = m.score == "flow_only"
        self.l2_normalize = bool(m.get("l2_normalize", False))
        self.mapper = None
        if not self.flow_only:
            if m.mapper == "bmr":
                self.mapper = BidirectionalMapping(
                    channels,
                    width=int(m.bmr.width),
                    blocks=int(m.bmr.blocks),
                    bottleneck=int(m.bmr.get("bottleneck", 0)) or None,
                    ksize_io=int(m.bmr.get("ksize_io", 1)),
                )
            else:
                self.mapper = DualProjection(channels, latent=int(m.bpfm.latent))
        stages = [
            Stage(
                "flow",
                int(t.flow_epochs),
                self.flow_loss,
                lambda spe: adam_l2(t.flow_optimizer),
                trainable=("flow",),
                prepare_batch=self.prepare_batch,
            )
        ]
        cache_z = bool(m.get("cache_flow_outputs", True)) and config.data.get("augment", "none") == "none"
        if not self.flow_only:
            stages.append(
                Stage(
                    "mapping",
                    int(t.mapping_epochs),
                    self.mapping_loss,
                    lambda spe: adam_l2(t.mapping_optimizer),
                    trainable=("mapping",),
                    prepare_batch=self.prepare_batch,
                    derive=self.flow_outputs if cache_z else None,
                )
            )
        self.stages = tuple(stages)

    def prepare_batch(self, batch: dict, rng: np.random.Generator) -> dict:
        """Host side: ``data.augment`` ("none" for NF-BMR), then only the features (and the cached
        flow outputs, when the stage has them) go to the devices."""
        out = {"features": self.augment(batch, rng)["features"]}
        if "derived" in batch:
            out["derived"] = batch["derived"]
        return out

    def source(self, batch) -> jax.Array:
        """``y``: the frozen extractor's features ``[B, h, w, c]``."""
        return jax.lax.stop_gradient(jnp.asarray(batch["features"][self.tap], jnp.float32))

    # -------------------------------------------------------------- training
    def init(self, rng: jax.Array, example_batch) -> State:
        y = jnp.zeros_like(self.source(example_batch))
        k_flow, k_map = jax.random.split(rng)
        params = {"flow": self.flow.init(k_flow, y)}
        model_state = {}
        if self.mapper is not None:
            variables = self.mapper.init(k_map, y, y)
            params["mapping"] = variables["params"]
            model_state = {k: v for k, v in variables.items() if k != "params"}
        return State(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state, opt_state=(), stats={})

    def flow_loss(self, params, state: State, batch, rng):
        """Stage 1, Eq. 8 on ``z = TNF(y)``; the model state passes through unchanged."""
        del rng
        z, logdet = self.flow.forward(params["flow"], self.source(batch))
        loss = nfbmr_nll(z, logdet, divide=bool(self.config.model.flow.get("divide_nll", True)))
        dims = int(np.prod(z.shape[1:]))
        return loss, ({"z_sq": jnp.mean(z * z), "logdet_per_dim": jnp.mean(logdet) / dims}, state.model_state)

    def flow_outputs(self, state: State, batch) -> dict:
        """``{"z": TNF(y)}`` with the frozen flow: the mapping stage's cached input (``Stage.derive``)."""
        return {"z": self.flow.forward(state.params["flow"], self.source(batch))[0]}

    def domains(self, flow_params, batch) -> tuple[jax.Array, jax.Array]:
        """``(y, z)`` as the mapping networks see them: ``z = stop_gradient(TNF(y))`` from the raw
        features (or ``batch["derived"]["z"]``, the same computed once), then both L2-normalised
        over channels when ``model.l2_normalize``."""
        y = self.source(batch)
        if "derived" in batch:
            z = jax.lax.stop_gradient(jnp.asarray(batch["derived"]["z"], jnp.float32))
        else:
            z = jax.lax.stop_gradient(self.flow.forward(flow_params, y)[0])
        if self.l2_normalize:
            y, z = l2_normalize_channels(y), l2_normalize_channels(z)
        return y, z

    def mapping_loss(self, params, state: State, batch, rng):
        """Stage 2, Eq. 11-13 with the flow frozen (``z`` under ``stop_gradient``); B-PFM's BatchNorm
        statistics come back as the new model state."""
        del rng
        y, z = self.domains(jax.lax.stop_gradient(params["flow"]), batch)
        variables = {"params": params["mapping"], **state.model_state}
        if "batch_stats" in state.model_state:
            (z_hat, y_hat), upd = self.mapper.apply(variables, y, z, train=True, mutable=["batch_stats"])
            new_ms = {**state.model_state, "batch_stats": upd["batch_stats"]}
        else:
            z_hat, y_hat = self.mapper.apply(variables, y, z, train=True)
            new_ms = state.model_state
        loss_s, loss_t = mapping_terms(y, z, y_hat, z_hat)
        return loss_s + loss_t, ({"loss_s": loss_s, "loss_t": loss_t}, new_ms)

    # -------------------------------------------------------------- scoring
    def feature_map(self, state: State, batch) -> jax.Array:
        """The anomaly map at the features' resolution ``[B, h, w]``: Eq. 14, or ``||z||^2 / 2``
        with ``model.score="flow_only"``."""
        params = eval_params(state)
        if self.flow_only:
            z, _ = self.flow.forward(params["flow"], self.source(batch))
            return flow_only_map(z)
        y, z = self.domains(params["flow"], batch)
        z_hat, y_hat = self.mapper.apply({"params": params["mapping"], **state.model_state}, y, z, train=False)
        return mapping_anomaly_map(y, z, y_hat, z_hat)

    def score(self, state: State, batch, rng: jax.Array):
        """``(maps [B, H, W], scores [B])``: :meth:`feature_map` bilinearly upsampled to the image
        size, and each upsampled map's maximum. Deterministic (``rng`` unused)."""
        del rng
        maps = upsample(self.feature_map(state, batch), tuple(batch["image"].shape[1:3]))
        return maps, jnp.max(maps, axis=(1, 2))
