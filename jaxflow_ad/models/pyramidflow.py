"""PyramidFlow (Lei, Hu, Wang, Liu; CVPR 2023): fully normalizing flow with latent templates.

Pipeline (paper Fig. 2-3, Sec. 3):

1. ImageNet-normalise the image, project it with a frozen orthogonal 1x1
   conv ``W: 3 -> C`` (FNF setting) to features ``x``; the official code never
   trains ``W`` (it runs under ``no_grad``), nor do we.
2. Decompose ``x`` into an ``L``-level pyramid (Eq. 1, :mod:`jaxflow_ad.flows.pyramid`).
3. Run ``D`` stacks of pyramid coupling blocks in the official order
   (:func:`~jaxflow_ad.flows.pyramid_coupling.pyramid_schedule`).
4. Training loss (Eq. 9): over all pairs ``i < j`` of the batch, compose the
   per-level squared latent differences, average over channels, take the mean
   magnitude of the unnormalised 2-D FFT (official ``BatchDiffLoss`` +
   ``compose_pyramid(...).mean(1)`` + ``fft2(...).abs().mean()``). No
   log-determinant enters: volume normalization keeps the latents from
   collapsing.
5. After training, the latent template is the mean latent pyramid over the
   training images in evaluation mode; the anomaly map (Eq. 10) composes the
   per-level ``|z_d - template_d|`` and averages over channels; the image
   score is its maximum.

Ablations of the paper's Table 2, selectable by config:

* ``model.loss="nll"`` (ablation I, Eq. 8): standard-normal likelihood of the
  latents with the flow's log-determinant, normally with
  ``model.volume_norm="none"``. The pyramid itself is over-complete and
  contributes no Jacobian; the loss is the per-dimension NLL of the latent
  pyramid plus the flow's logdet, as the paper states it.
* ``model.template="zero"`` (II): a zero template.
* ``model.difference="composed"`` (III): compose latents and template first,
  then take the difference.
* ``model.loss="spatial"`` (IV): the mean of the composed squared differences
  instead of its Fourier magnitude.

Paper vs. official code (we follow the code, as the golden test requires):
nearest rather than bilinear resampling between levels; max-pool 'down'
operator; the per-category settings in :data:`CATEGORY_SETTINGS`. The official
memory-saving backprop updates the volume-norm running means three times per
step; ours updates them once.

The ResNet18-encoder variant replaces step 1 with a frozen ImageNet ResNet18
stem (conv1, bn1, relu, maxpool, layer1: 64 channels at 1/4 resolution), a
frozen extractor whose features the engine computes once per split and caches
(``model.encoder``; never in the checkpoint). The official-checkpoint converter
is :func:`third_party.pyramidflow.from_official_state_dict`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxflow_ad.errors import ConfigError
from jaxflow_ad.flows import pyramid as pyr
from jaxflow_ad.flows.pyramid_coupling import PyramidCoupling, pyramid_schedule
from jaxflow_ad.flows.reversible import chain_forward, chain_inverse
from jaxflow_ad.models.base import Method, Stage, State, eval_params, to_float
from jaxflow_ad.models.optim import torch_adam
from jaxflow_ad.models.statistics import StreamingMean
from jaxflow_ad.nn.conv import resolve_impl
from jaxflow_ad.spectral.fourier_loss import mean_abs_fft2

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# Official per-category "auto" settings (train.py): levels 8 for metal_nut, carpet,
# transistor, 2 for screw, 4 otherwise; SVN for carpet, grid, bottle, transistor, CVN
# otherwise; flips + rot90 for the texture classes (paper Sec. 4.4).
_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
_OBJECTS = (
    "bottle",
    "cable",
    "capsule",
    "hazelnut",
    "metal_nut",
    "pill",
    "screw",
    "toothbrush",
    "transistor",
    "zipper",
)
CATEGORY_SETTINGS: dict[str, dict] = {
    c: {
        "levels": {"metal_nut": 8, "carpet": 8, "transistor": 8, "screw": 2}.get(c, 4),
        "volume_norm": "SVN" if c in ("carpet", "grid", "bottle", "transistor") else "CVN",
        "augment": c in _TEXTURES,
    }
    for c in _TEXTURES + _OBJECTS
}

LOSSES = ("fourier", "spatial", "nll")


def normalize(images: jax.Array) -> jax.Array:
    """[0,1] RGB NHWC -> ImageNet-normalised."""
    return (images - IMAGENET_MEAN) / IMAGENET_STD


def denormalize(x: jax.Array) -> jax.Array:
    return x * IMAGENET_STD + IMAGENET_MEAN


def pair_indices(batch: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``i < j`` (official ``np.triu_indices(batch, 1)``)."""
    if batch < 2:
        raise ConfigError(
            f"the pairwise loss needs a batch of at least 2 images, got {batch} (config key train.batch_size)"
        )
    return np.triu_indices(batch, 1)


def pairwise_difference_map(levels: Sequence[jax.Array], up: str = "nearest") -> jax.Array:
    """Composed per-level squared differences of all pairs, channel mean: ``[P, H, W]``."""
    i, j = pair_indices(levels[0].shape[0])
    diffs = [(l[i] - l[j]) ** 2 for l in levels]
    return jnp.mean(pyr.compose(diffs, up), axis=-1)


def fourier_loss(levels: Sequence[jax.Array], up: str = "nearest") -> jax.Array:
    """Eq. 9 as the official code computes it."""
    return mean_abs_fft2(pairwise_difference_map(levels, up))


def spatial_loss(levels: Sequence[jax.Array], up: str = "nearest") -> jax.Array:
    """Ablation IV: the spatial version of Eq. 9."""
    return jnp.mean(pairwise_difference_map(levels, up))


def gaussian_nll(levels: Sequence[jax.Array], logdet: jax.Array) -> jax.Array:
    """Ablation I (Eq. 8): mean per-dimension negative log-likelihood under N(0, I)."""
    n_dims = sum(int(np.prod(l.shape[1:])) for l in levels)
    sq = sum(jnp.sum(l.reshape(l.shape[0], -1) ** 2, axis=1) for l in levels)
    nll = 0.5 * sq + 0.5 * n_dims * np.log(2 * np.pi) - logdet
    return jnp.mean(nll) / n_dims


def anomaly_map(
    levels: Sequence[jax.Array], template: Sequence[jax.Array], up: str = "nearest", difference: str = "pyramid"
) -> jax.Array:
    """Eq. 10: ``compose(|z_d - template_d|)``, channel mean -> ``[B, H, W]``.

    ``difference="composed"`` is ablation III: ``|compose(z) - compose(template)|``.
    """
    if difference == "pyramid":
        return jnp.mean(pyr.compose([jnp.abs(z - t) for z, t in zip(levels, template)], up), axis=-1)
    if difference == "composed":
        return jnp.mean(jnp.abs(pyr.compose(list(levels), up) - pyr.compose(list(template), up)), axis=-1)
    raise ConfigError(f"unknown model.difference {difference!r}; use 'pyramid' or 'composed'")


def orthogonal_projection(key: jax.Array, channels: int) -> jax.Array:
    """A ``3 x C`` matrix with orthonormal rows (official ``nn.init.orthogonal_`` on the C x 3 weight)."""
    if channels < 3:
        raise ConfigError(f"model.channels must be >= 3 for the 3->C projection, got {channels}")
    return jax.nn.initializers.orthogonal()(key, (channels, 3), jnp.float32).T


@dataclasses.dataclass(frozen=True)
class PyramidFlowNet:
    """The flow as pure functions over ``(params, model_state)``.

    ``params = {"block_00": ..., ...}`` (trainable); ``model_state =
    {"encoder": {"in_proj": [3, C]}, "blocks": {"block_00": {"constants": ...,
    "volume_norm": ...}}}``. With a pretrained encoder (``encoder != "none"``) the
    flow's input is the encoder's features, computed outside (a frozen extractor,
    :class:`jaxflow_ad.backbones.FrozenExtractor`), and ``model_state`` has no
    ``encoder`` entry.
    """

    channels: int = 16
    levels: int = 4
    stacks: int = 4
    ksize: int = 7
    volume_norm: str = "CVN"
    pyramid_down: str = "max"
    pyramid_up: str = "nearest"
    fast_down: bool = True
    reversible: bool = False
    encoder: str = "none"
    conv_impl: str = "auto"  # "auto" | "xla" | "im2col" | "fft" | "fft_grad" (jaxflow_ad.nn.conv)
    up_polyphase: bool = True  # 'up' blocks: first conv as 4 polyphase convs at half resolution

    @functools.cached_property
    def layers(self) -> tuple[PyramidCoupling, ...]:
        return tuple(
            PyramidCoupling(
                kind,
                start,
                self.channels,
                self.ksize,
                self.volume_norm,
                fast_down=self.fast_down,
                conv_impl=resolve_impl(self.conv_impl, reversible=self.reversible),
                up_polyphase=self.up_polyphase,
            )
            for kind, start in pyramid_schedule(self.levels, self.stacks)
        )

    @property
    def names(self) -> list[str]:
        return [f"block_{i:02d}" for i in range(len(self.layers))]

    # -------------------------------------------------------------- variables
    def init(self, rng: jax.Array, input_shape: tuple[int, int, int]):
        """Variables for inputs of ``input_shape``: an image ``(H, W, 3)`` (FNF) or the
        encoder's features ``(h, w, C)``."""
        h, w, c = input_shape
        k_proj, k_blocks = jax.random.split(rng)
        model_state = {}
        if self.encoder == "none":
            pyr.check_divisible((1, h, w), self.levels)
            model_state["encoder"] = {"in_proj": orthogonal_projection(k_proj, self.channels)}
        elif c != self.channels:
            raise ConfigError(f"model.channels={self.channels} but the encoder gives {c} channels")
        feat_shape = jax.eval_shape(lambda m: self.encode(m, jnp.zeros((1, h, w, c))), model_state).shape
        pyr.check_divisible(feat_shape, self.levels)
        feats = pyr.decompose(jnp.zeros(feat_shape), self.levels, self.pyramid_down, self.pyramid_up)
        params, blocks = {}, {}
        for name, layer, key in zip(self.names, self.layers, jax.random.split(k_blocks, len(self.layers))):
            v = layer.init(key, feats, method=layer.forward)
            params[name] = v["params"]
            blocks[name] = {k: c for k, c in v.items() if k != "params"}
        return params, {**model_state, "blocks": blocks}

    def _variables(self, params, model_state):
        return [{"params": params[n], **model_state["blocks"][n]} for n in self.names]

    # -------------------------------------------------------------- maps
    def encode(self, model_state, x: jax.Array) -> jax.Array:
        """The flow's input features.

        FNF: ImageNet-normalised NHWC images through the frozen orthogonal 3->C
        projection. Pretrained variant: ``x`` already holds the frozen encoder's
        features (ResNet18 ``layer1``: 64 channels at 1/4 resolution, computed in
        inference mode by the engine's feature cache). The official code leaves
        the ResNet BatchNorms in training mode while the flow trains (batch
        statistics of 2 images, drifting running stats); we keep the pretrained
        encoder fixed as the paper describes.
        """
        if self.encoder == "none":
            return jax.lax.stop_gradient(x @ model_state["encoder"]["in_proj"])
        return jax.lax.stop_gradient(x)

    def forward(self, params, model_state, x: jax.Array, *, train: bool = False):
        """Normalised images (or encoder features) -> ``(latent levels, logdet [B], new model_state)``."""
        feats = pyr.decompose(self.encode(model_state, x), self.levels, self.pyramid_down, self.pyramid_up)
        z, logdet, new_vars = chain_forward(
            self.layers,
            self._variables(params, model_state),
            feats,
            train=train,
            reversible=self.reversible and train,
            period=len(self.layers) // self.stacks,
        )
        blocks = {n: {k: c for k, c in v.items() if k != "params"} for n, v in zip(self.names, new_vars)}
        return z, logdet, dict(model_state, blocks=blocks)

    def inverse(self, params, model_state, z: Sequence[jax.Array]):
        """Latent levels -> feature levels (evaluation mode)."""
        feats, _ = chain_inverse(self.layers, self._variables(params, model_state), tuple(z), train=False)
        return feats

    def image_from_latents(self, params, model_state, z: Sequence[jax.Array]) -> jax.Array:
        """Image-template estimation (paper end of Sec. 3.3): inverse flow, compose,
        then the least-squares solution of ``W I = x`` through the 3->C projection.
        Returns RGB in [0, 1] (clipped)."""
        feat = pyr.compose(self.inverse(params, model_state, z), self.pyramid_up)
        proj = model_state["encoder"]["in_proj"]  # [3, C]; x = I @ proj
        b, h, w, c = feat.shape
        sol, *_ = jnp.linalg.lstsq(proj.T, feat.reshape(-1, c).T)  # proj.T @ I^T = x^T
        img = denormalize(sol.T.reshape(b, h, w, 3))
        return jnp.clip(img, 0.0, 1.0)


def lr_schedule(cfg: ml_collections.ConfigDict, epochs: int, steps_per_epoch: int) -> optax.Schedule | None:
    """The learning rate of every step, or None for the official constant rate.

    ``cfg.anneal_epochs = k > 0`` keeps the rate constant, then anneals it over the last ``k``
    epochs along a half cosine from ``lr`` towards ``lr * cfg.anneal_to``, reached one step after
    the last update (so that no update has a zero rate). Not in the paper: a remedy for the seed dependence measured by
    ``benchmarks/pyramidflow_seed_anatomy.py``; with a constant rate, Adam's step noise
    keeps the final weights (and so the result) a random draw around a still-improving mean.
    """
    k = int(cfg.get("anneal_epochs", 0))
    if k <= 0:
        return None
    if k > epochs:
        raise ConfigError(f"train.optimizer.anneal_epochs={k} exceeds train.epochs={epochs}; use 0..{epochs}")
    total, tail = epochs * steps_per_epoch, k * steps_per_epoch
    lr, end = float(cfg.lr), float(cfg.lr) * float(cfg.get("anneal_to", 0.0))
    decay = optax.cosine_decay_schedule(lr, tail, alpha=end / lr)
    return optax.join_schedules([optax.constant_schedule(lr), decay], [total - tail])


def make_optimizer(
    cfg: ml_collections.ConfigDict, epochs: int = 0, steps_per_epoch: int = 0
) -> optax.GradientTransformation:
    """Official optimizer: clip grad norm 1, Adam(lr 2e-4, betas (0.5, 0.9), eps 1e-4)
    with *coupled* L2 weight decay 1e-5 (torch ``Adam(weight_decay=...)``), no schedule
    (optionally annealed at the end: :func:`lr_schedule`)."""
    schedule = lr_schedule(cfg, epochs, steps_per_epoch)
    return torch_adam(
        cfg.lr if schedule is None else schedule,
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        clip_norm=cfg.clip_norm,
    )


ENCODERS = {"resnet18": "layer1", "resnet34": "layer1"}


def load_encoder(m: ml_collections.ConfigDict):
    """The frozen pretrained encoder of the ResNet variant, as a :class:`FrozenExtractor`.

    Official default: ``conv1, bn1, relu, maxpool, layer1`` of an ImageNet ResNet18
    (64 channels at 1/4 resolution). Weights come from ``model.backbone.weights``
    (converted with ``python -m third_party.convert --arch resnet18 ...``); without
    them :func:`jaxflow_ad.backbones.load_backbone` falls back to EfficientNet-Lite0
    at the same stride and says so in the extractor's note, unless
    ``model.backbone.require_weights``.
    """
    from jaxflow_ad.backbones import FrozenExtractor  # imported only for this variant

    if m.encoder not in ENCODERS:
        raise ConfigError(f"unknown model.encoder {m.encoder!r}; use 'none' or one of {sorted(ENCODERS)}")
    b = m.get("backbone", ml_collections.ConfigDict())
    cfg = {
        "arch": m.encoder,
        "weights": b.get("weights") or None,
        "random_init": bool(b.get("random_init", False)),
        "require_weights": bool(b.get("require_weights", False)),
    }
    return FrozenExtractor.from_config(cfg, taps=(ENCODERS[m.encoder],))


def net_from_config(m: ml_collections.ConfigDict, channels=None) -> PyramidFlowNet:
    if m.loss not in LOSSES:
        raise ConfigError(f"unknown model.loss {m.loss!r}; use one of {LOSSES}")
    return PyramidFlowNet(
        channels=channels or m.channels,
        levels=m.levels,
        stacks=m.stacks,
        ksize=m.ksize,
        volume_norm=m.volume_norm,
        pyramid_down=m.pyramid_down,
        pyramid_up=m.pyramid_up,
        fast_down=m.fast_down,
        reversible=m.reversible,
        encoder=m.encoder,
        conv_impl=m.get("conv_impl", "auto"),
        up_polyphase=m.get("up_polyphase", True),
    )


class PyramidFlow(Method):
    """The PyramidFlow method for the engine (see :mod:`jaxflow_ad.models.base`).

    One stage (``flow``); statistics: the latent template. FNF reads
    ``batch["image"]``; the ResNet variant reads ``batch["features"][tap]`` from its
    frozen extractor (flips/rot90 of texture categories then act on the cached
    feature maps, an approximation of the official augmentation of the input image:
    the stem's convolutions are not flip-equivariant).
    """

    name = "pyramidflow"
    has_statistics = True
    jit_init = True  # bitwise the eager init (tests/models/test_pyramidflow.py)

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        m = config.model
        if m.template not in ("mean", "zero"):
            raise ConfigError(f"unknown model.template {m.template!r}; use 'mean' or 'zero'")
        if m.encoder == "none":
            self.net = net_from_config(m)
        else:  # the official code forces C to the encoder's channels (64 for ResNet18)
            self.extractor = load_encoder(m)
            (tap,) = self.extractor.taps
            channels = self.extractor.output_shapes((1, 64, 64, 3))[tap][-1]
            self.net = net_from_config(m, channels)
        self.stages = (
            Stage(
                "flow",
                int(config.train.epochs),
                self.loss,
                lambda spe: make_optimizer(config.train.optimizer, int(config.train.epochs), spe),
                prepare_batch=self.prepare_batch,
                param_ema=float(config.train.get("param_ema", 0.0)),
                learning_rate=self._learning_rate,
            ),
        )

    def _learning_rate(self, steps_per_epoch: int) -> optax.Schedule:
        t = self.config.train
        schedule = lr_schedule(t.optimizer, int(t.epochs), steps_per_epoch)
        return schedule if schedule is not None else optax.constant_schedule(float(t.optimizer.lr))

    @classmethod
    def configure(cls, config: ml_collections.ConfigDict, category: str) -> ml_collections.ConfigDict:
        """Apply the official per-category levels and volume norm when ``data.per_category``."""
        if config.data.get("per_category", False) and category in CATEGORY_SETTINGS:
            s = CATEGORY_SETTINGS[category]
            config.model.levels = s["levels"]
            config.model.volume_norm = s["volume_norm"]
        return super().configure(config, category)

    def prepare_batch(self, batch: dict, rng: np.random.Generator) -> dict:
        """Host side: ``data.augment`` (flips/rot90 of textures), then the images to float32 in
        [0, 1] on the host, as the reader stored them before the contract: training then sees
        the same inputs bit for bit (on the device XLA may fuse the conversion into the
        normalisation, and a flow trained for many steps amplifies 1-ulp differences)."""
        batch = self.augment(batch, rng)
        batch["image"] = to_float(batch["image"])
        return batch

    def inputs(self, batch) -> jax.Array:
        """The flow's input: ImageNet-normalised images (FNF) or the extractor's features."""
        if self.extractor is None:
            return normalize(to_float(batch["image"]))
        return batch["features"][self.extractor.taps[0]]

    # -------------------------------------------------------------- training
    def init(self, rng: jax.Array, example_batch) -> State:
        params, model_state = self.net.init(rng, tuple(self.inputs(example_batch).shape[1:]))
        return State(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state, opt_state=(), stats={})

    def loss(self, params, state: State, batch, rng):
        """Eq. 9 (or an ablation's loss) on a batch; ``(loss, ({}, new model_state))``."""
        del rng  # deterministic given the batch
        m = self.config.model
        z, logdet, new_ms = self.net.forward(params, state.model_state, self.inputs(batch), train=True)
        if m.loss == "fourier":
            value = fourier_loss(z, self.net.pyramid_up)
        elif m.loss == "spatial":
            value = spatial_loss(z, self.net.pyramid_up)
        else:
            value = gaussian_nll(z, logdet)
        return value, ({}, new_ms)

    # -------------------------------------------------------------- statistics and scoring
    def latents(self, state: State, batch) -> list[jax.Array]:
        """Evaluation-mode latent pyramid of a batch."""
        z, _, _ = self.net.forward(eval_params(state), state.model_state, self.inputs(batch), train=False)
        return list(z)

    def statistics_batch(self, state: State, batch) -> list[jax.Array]:
        return self.latents(state, batch)

    def fit_statistics(self, state: State, outputs) -> dict:
        """Latent template: the mean evaluation-mode latent pyramid over the training images
        (a zero template for ablation II)."""
        del state
        mean = StreamingMean()
        for z in outputs:
            mean.update(list(z))
        template = mean.result()
        if self.config.model.template == "zero":
            template = [np.zeros_like(t) for t in template]
        return {"template": template}

    def score(self, state: State, batch, rng: jax.Array):
        """Eq. 10 anomaly maps and their maxima; deterministic (``rng`` unused)."""
        del rng
        z = self.latents(state, batch)
        amap = anomaly_map(z, state.stats["template"], self.net.pyramid_up, self.config.model.difference)
        return amap, jnp.max(amap, axis=(1, 2))

    def artifacts(self, state: State) -> dict[str, np.ndarray]:
        if self.extractor is not None or "template" not in state.stats:
            return {}
        img = self._image_from_latents(eval_params(state), state.model_state, state.stats["template"])
        return {"image_template": np.asarray(img[0])}

    @functools.cached_property
    def _image_from_latents(self):
        # jitted once per method: one program (cached by XLA across runs) instead of ~5 s of eager ops
        # compiled one by one, and traced once for all the categories sharing this method
        return jax.jit(self.net.image_from_latents)
