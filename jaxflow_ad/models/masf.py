"""MASF: masked spectral distillation with a spectral memory bank and uncertainty-gated fusion.

Written from the paper (``shared/papers/003_4305ed01614c4c02.txt``, Sec. 3.3-3.7 and 4; no
code is public) and ``shared/notes/masf.md``, which lists what the paper leaves open. The
pieces are pure functions elsewhere: :mod:`jaxflow_ad.spectral.masf` (spectral split, masks,
phase perturbation, losses, every FFT in float32/complex64), :mod:`jaxflow_ad.nn.memory_bank`
(greedy coreset, k-NN, prototypes, fusion weights) and :mod:`jaxflow_ad.nn.attention`
(cross-attention). Per scale ``l`` of a frozen teacher ``T_l`` (WideResNet-50-2 layers 1-3):

1. SDM (Sec. 3.3): ``low, high = spectral_split(T_l, r)`` (orthonormal FFT2, centred low-pass
   mask of ratio ``r = 0.3``); channel gates ``g_lo, g_hi = sigmoid(W2 GELU(W1 [pool(low); pool(high)]))``
   (an SE block on the pooled pair: "two-layer 1x1 convolution with GELU, sigmoid");
   ``F_spec = GELU(BN(conv1x1(g_lo * low + g_hi * high)))``.
2. AMFD (Sec. 3.4): a spatially masked view (35 % of 2x2 patches zeroed) and a frequency-masked
   view (25 % of rfft2 coefficients zeroed), masks per sample from the step's key, shared by the
   channels; cross-attention with Q from the spatial view and K = V from the frequency view (4 heads,
   pre-LayerNorm, residual on the query), two residual blocks and a linear projection give ``S_l``.
   Loss: ``mean(1 - cos(T_l, S_l)) + 0.5 * mean((|FFT2 S_l| - |FFT2 T_l|)^2)`` summed over scales.
3. SAMB (Sec. 3.5): prototypes ``L2norm(p + MLP_2(pad_to_C(|FFT_1(p)|)))`` of the teacher's
   patch embeddings ``p`` of the training images, a greedy k-center coreset (ratio 0.1, at most
   3000 per scale, PatchCore's random projection for the selection); bank score: mean distance to
   the ``k`` nearest prototypes.
4. Per-scale score ``s_l = 0.6 * (1 - cos(T_l, S_l)) + 0.4 * bank_l``, bilinearly upsampled to the
   image; UGHF (Sec. 3.6): ``s = sum_l softmax(-log sigma^2)_l * s_l``.
5. TTSA (Sec. 3.7): ``n = 5`` views of the image with its FFT amplitude kept and the phase
   perturbed by ``eps ~ N(0, 0.1^2)``; the teacher runs on each view inside :meth:`MASF.score`
   and the fused maps are averaged.

Choices where the paper is silent (each a config value):

* Low-pass mask: a square of half-width ``r`` of the half-spectrum in each axis
  (``model.sdm.shape="circle"``: a disc of normalised radius ``r``).
* Student: one per scale at the teacher's width; residual block = ``conv3x3 -> GELU -> conv3x3``
  plus the input (:class:`~jaxflow_ad.nn.attention.ResidualBlock`); keys/values average-pooled
  by ``model.student.kv_pool[l]`` before attention
  (1 = the paper; the CPU quick start pools layer 1's 64x64 positions by 4).
* Masks at test time: on by default (``model.test_masking``): the asymmetry between the views is
  what makes the reconstruction fail on anomalies ("the asymmetry generates the anomaly signal");
  without masks the student sees all of ``T_l``. At test time the masks and the TTSA phase noise
  are one fixed draw (``model.score_seed``) shared by every image, so that a score depends on the
  image alone (evaluation, prediction and the exported scorer agree image for image).
* ``MLP_2`` of the prototypes: the paper gives it no loss, so it stays at its seeded random
  initialisation (a fixed random feature map of the channel spectrum, outside the trained
  parameters: ``params["proto"]`` is frozen in every stage).
* The bank is used only for scoring, so it is built once after training (the paper's rebuild
  every 10 epochs would give the same final bank: nothing in training reads it).
* UGHF's log-variances: learned by a heteroscedastic term on each scale's distillation error,
  ``sum_l exp(-lv_l) * stopgrad(L_l) + lv_l`` (Kendall & Gal), added to the distillation loss;
  the stop-gradient keeps the distillation unweighted. At the optimum ``lv_l = log L_l``: a scale
  the student reconstructs worse on normal data weighs less.
* Maps: ``1 - cos`` and the bank distance are both in [0, 2]; upsampled bilinearly, fused,
  averaged over the TTSA views, then smoothed by a Gaussian of ``model.smooth_sigma`` = 4 pixels
  (0: none); image score = the maximum.
* Schedule: AdamW 2e-4 (decoupled decay 1e-5), linear warm-up from 0 over 5 epochs, then cosine
  with warm restarts of period 15 epochs down to 1e-6; 15 epochs, batch 8, 256 px. The last epoch
  is evaluated: the paper chose checkpoints on the test set, we never do.

Ablations (Table 4): ``model.bank=False`` (no SAMB; ``s_l`` = the cosine map),
``model.kv_view="unmasked"`` (no frequency masking: K = V = ``F_spec``),
``model.kv_view="spatial"`` (spatial masking only: K = V = the spatially masked view),
``model.sdm.enabled=False`` (no spectral decomposition: ``F_spec = GELU(BN(conv1x1(T_l)))``),
``model.fusion="mean"`` (no uncertainty fusion: equal weights), ``model.ttsa.views=0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxflow_ad.errors import ConfigError
from jaxflow_ad.models.base import Method, Stage, State, eval_params, to_float
from jaxflow_ad.models.statistics import ReservoirBank
from jaxflow_ad.nn.attention import CrossAttention, ResidualBlock
from jaxflow_ad.nn.memory_bank import (
    SpectralAnchor,
    greedy_coreset,
    heteroscedastic_loss,
    knn_score,
    uncertainty_weights,
)
from jaxflow_ad.spectral.masf import (
    apply_frequency_mask,
    cosine_distance,
    distillation_loss,
    frequency_mask,
    patch_mask,
    spectral_split,
    ttsa_views,
)

KV_VIEWS = ("freq", "unmasked", "spatial")
FUSIONS = ("uncertainty", "mean")


# ----------------------------------------------------------------------------- pure helpers


def gaussian_smooth(maps: jax.Array, sigma: float) -> jax.Array:
    """``[B, H, W]`` maps smoothed by a Gaussian of ``sigma`` pixels (truncated at 4 sigma, reflected
    borders: SciPy's ``gaussian_filter`` defaults); ``sigma <= 0`` returns them unchanged."""
    if sigma <= 0:
        return maps
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    taps = jnp.asarray(taps / taps.sum(), jnp.float32)
    out = jnp.pad(maps, ((0, 0), (radius, radius), (radius, radius)), mode="symmetric")
    h, w = maps.shape[1:]
    out = sum(taps[i] * out[:, i : i + h, :] for i in range(2 * radius + 1))
    return sum(taps[i] * out[:, :, i : i + w] for i in range(2 * radius + 1))


def upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``[B, h, w]`` -> ``[B, H, W]``, bilinear with half-pixel centres."""
    return jax.image.resize(maps, (maps.shape[0], *size), "bilinear")


def masf_schedule(lr: float, steps_per_epoch: int, warmup_epochs: int, t0_epochs: int, floor: float, epochs: int):
    """Linear warm-up from 0 over ``warmup_epochs``, then cosine annealing with warm restarts of period
    ``t0_epochs`` from ``lr`` to ``floor`` (SGDR; PyTorch's ``CosineAnnealingWarmRestarts``)."""
    warm = max(0, int(warmup_epochs * steps_per_epoch))
    period = max(1, int(t0_epochs * steps_per_epoch))
    cycles = max(1, math.ceil(max(1, epochs * steps_per_epoch - warm) / period))
    cosine = optax.sgdr_schedule(
        [dict(init_value=lr, peak_value=lr, warmup_steps=0, decay_steps=period, end_value=floor)] * cycles
    )
    if warm == 0:
        return cosine
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), cosine], [warm])


# ----------------------------------------------------------------------------- modules


class SpectralDecomposition(nn.Module):
    """SDM: the gated recombination of a feature map's low and high spectral bands (Sec. 3.3)."""

    channels: int
    ratio: float = 0.3
    shape: str = "square"
    enabled: bool = True
    reduction: int = 4

    @nn.compact
    def __call__(self, t: jax.Array, train: bool) -> jax.Array:
        c = self.channels
        if self.enabled:
            low, high = spectral_split(t, self.ratio, self.shape)
            pooled = jnp.concatenate([low.mean((1, 2)), high.mean((1, 2))], axis=-1)
            g = nn.gelu(nn.Dense(max(8, 2 * c // self.reduction), name="gate_in")(pooled), approximate=False)
            g = jax.nn.sigmoid(nn.Dense(2 * c, name="gate_out")(g))
            x = g[:, None, None, :c] * low + g[:, None, None, c:] * high
        else:
            x = t
        x = nn.Conv(c, (1, 1), name="proj")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(x)
        return nn.gelu(x, approximate=False)


class Student(nn.Module):
    """AMFD's decoder for one scale: SSCA, two residual blocks, a linear projection (Sec. 3.4)."""

    channels: int
    heads: int = 4
    kv_pool: int = 1

    @nn.compact
    def __call__(self, q_view: jax.Array, kv_view: jax.Array) -> jax.Array:
        x = CrossAttention(self.channels, heads=self.heads, kv_pool=self.kv_pool, name="ssca")(q_view, kv_view)
        x = ResidualBlock(self.channels, name="res_0")(x)
        x = ResidualBlock(self.channels, name="res_1")(x)
        return nn.Dense(self.channels, name="out")(x)


class MASFNet(nn.Module):
    """Every trained part of MASF: per scale an SDM and a student, and the fusion's log-variances."""

    channels: tuple[int, ...]
    sdm_ratio: float = 0.3
    sdm_shape: str = "square"
    sdm_enabled: bool = True
    heads: int = 4
    kv_pool: tuple[int, ...] = (1, 1, 1)
    spatial_ratio: float = 0.35
    patch: int = 2
    freq_ratio: float = 0.25
    kv_view: str = "freq"

    def setup(self):
        self.sdm = [
            SpectralDecomposition(c, self.sdm_ratio, self.sdm_shape, self.sdm_enabled, name=f"sdm_{i}")
            for i, c in enumerate(self.channels)
        ]
        self.students = [
            Student(c, self.heads, int(self.kv_pool[i]), name=f"student_{i}") for i, c in enumerate(self.channels)
        ]
        self.log_vars = self.param("log_vars", nn.initializers.zeros, (len(self.channels),))

    def views(self, spec: jax.Array, key: jax.Array, masked: bool, shared: bool) -> tuple[jax.Array, jax.Array]:
        """``(queries, keys/values)``: the spatially and the frequency-masked view of ``F_spec``; masks per
        sample, or (``shared``) one pair of masks for every sample of the batch."""
        if not masked:
            return spec, spec
        b, h, w, _ = spec.shape
        n = 1 if shared else b
        k_sp, k_fr = jax.random.split(key)
        q = jnp.where(patch_mask(k_sp, n, h, w, self.patch, self.spatial_ratio), spec, 0).astype(spec.dtype)
        if self.kv_view == "freq":
            kv = apply_frequency_mask(spec, frequency_mask(k_fr, n, h, w, self.freq_ratio))
        elif self.kv_view == "spatial":
            kv = q
        else:
            kv = spec
        return q, kv

    def __call__(
        self, feats: Sequence[jax.Array], key: jax.Array, *, train: bool, masked: bool = True, shared: bool = False
    ):
        """``([S_l], log_vars)``: the students' reconstructions of the teacher features (masks per sample,
        or one set for the whole batch with ``shared``)."""
        out = []
        for i, t in enumerate(feats):
            spec = self.sdm[i](t, train)
            q, kv = self.views(spec, jax.random.fold_in(key, i), masked, shared)
            out.append(self.students[i](q, kv))
        return out, self.log_vars


# ----------------------------------------------------------------------------- the method


def load_teacher(b: ml_collections.ConfigDict):
    """The frozen teacher as a :class:`~jaxflow_ad.backbones.FrozenExtractor` with ``b.taps``."""
    from jaxflow_ad.backbones import FrozenExtractor

    return FrozenExtractor.from_backbone_config(b, taps=b.taps)


class MASF(Method):
    """MASF for the engine (see :mod:`jaxflow_ad.models.base`).

    ``params = {"net": MASFNet params, "proto": {tap: SpectralAnchor params}}`` (``proto`` frozen);
    ``model_state = {"batch_stats": ...}`` (the SDMs' BatchNorm); ``stats = {"bank": {tap: [K, C]}}``.
    One stage, ``distill``, trains ``("net",)`` on ``batch["features"][tap]``.
    """

    name = "masf"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        m, t = config.model, config.train
        if m.kv_view not in KV_VIEWS:
            raise ConfigError(f"config key model.kv_view={m.kv_view!r}: use one of {KV_VIEWS}")
        if m.fusion not in FUSIONS:
            raise ConfigError(f"config key model.fusion={m.fusion!r}: use one of {FUSIONS}")
        self.extractor = load_teacher(m.backbone)
        self.taps = tuple(self.extractor.taps)
        shapes = self.extractor.output_shapes((1, 64, 64, 3))
        self.channels = tuple(int(shapes[tap][-1]) for tap in self.taps)
        kv_pool = tuple(int(k) for k in m.student.kv_pool)
        if len(kv_pool) != len(self.taps):
            raise ConfigError(
                f"config key model.student.kv_pool={kv_pool} needs one pooling factor per tap {self.taps}"
            )
        self.net = MASFNet(
            self.channels,
            sdm_ratio=float(m.sdm.ratio),
            sdm_shape=str(m.sdm.shape),
            sdm_enabled=bool(m.sdm.enabled),
            heads=int(m.student.heads),
            kv_pool=kv_pool,
            spatial_ratio=float(m.mask.spatial_ratio),
            patch=int(m.mask.patch),
            freq_ratio=float(m.mask.freq_ratio),
            kv_view=str(m.kv_view),
        )
        self.anchor = SpectralAnchor()  # MLP_2 hidden = C, per scale its own parameters
        self.has_statistics = bool(m.bank.enabled)
        self.stages = (
            Stage(
                "distill",
                int(t.epochs),
                self.loss,
                self.optimizer,
                trainable=("net",),
                prepare_batch=self.prepare_batch,
                learning_rate=self.schedule,
            ),
        )

    # ------------------------------------------------------------------ training
    def schedule(self, steps_per_epoch: int):
        o = self.config.train.optimizer
        return masf_schedule(
            float(o.lr),
            steps_per_epoch,
            int(o.warmup_epochs),
            int(o.t0_epochs),
            float(o.min_lr),
            int(self.config.train.epochs),
        )

    def optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        o = self.config.train.optimizer
        return optax.adamw(self.schedule(steps_per_epoch), weight_decay=float(o.weight_decay))

    def prepare_batch(self, batch: dict, rng: np.random.Generator) -> dict:
        """Host side: only the teacher features go to the devices (no augmentation: the paper names none)."""
        return {"features": self.augment(batch, rng)["features"]}

    def teacher(self, batch) -> list[jax.Array]:
        return [jax.lax.stop_gradient(jnp.asarray(batch["features"][tap], jnp.float32)) for tap in self.taps]

    def init(self, rng: jax.Array, example_batch) -> State:
        feats = [jnp.zeros_like(f) for f in self.teacher(example_batch)]
        k_net, k_mask, k_proto = jax.random.split(rng, 3)
        variables = self.net.init(k_net, feats, k_mask, train=False)
        proto = {
            tap: self.anchor.init(jax.random.fold_in(k_proto, i), f[:, :1, :1])["params"]
            for i, (tap, f) in enumerate(zip(self.taps, feats))
        }
        return State(
            step=jnp.zeros((), jnp.int32),
            params={"net": variables["params"], "proto": proto},
            model_state={"batch_stats": variables["batch_stats"]},
            opt_state=(),
            stats={},
        )

    def loss(self, params, state: State, batch, rng):
        """Sum over scales of the distillation loss (cosine + 0.5 spectral), plus UGHF's heteroscedastic term."""
        feats = self.teacher(batch)
        (outs, log_vars), upd = self.net.apply(
            {"params": params["net"], "batch_stats": state.model_state["batch_stats"]},
            feats,
            rng,
            train=True,
            mutable=["batch_stats"],
        )
        w = float(self.config.model.spectral_weight)
        per_scale, metrics = [], {}
        for tap, s, t in zip(self.taps, outs, feats):
            value, parts = distillation_loss(s, t, spectral_weight=w)
            per_scale.append(value)
            metrics[f"{tap}/cos"] = parts["cos"]
            metrics[f"{tap}/spectral"] = parts["spectral"]
        errors = jnp.stack(per_scale)
        loss = jnp.sum(errors)
        if self.config.model.fusion == "uncertainty":
            loss = loss + heteroscedastic_loss(jax.lax.stop_gradient(errors), log_vars)
            for i, tap in enumerate(self.taps):
                metrics[f"{tap}/log_var"] = log_vars[i]
        return loss, (metrics, {**state.model_state, "batch_stats": upd["batch_stats"]})

    # ------------------------------------------------------------------ statistics (SAMB)
    def prototypes(self, params, tap: str, t: jax.Array) -> jax.Array:
        """``[B, h*w, C]``: the joint prototypes of every patch embedding of ``t`` ``[B, h, w, C]``."""
        p = t.reshape(t.shape[0], -1, t.shape[-1])
        return self.anchor.apply({"params": params["proto"][tap]}, p)

    def statistics_batch(self, state: State, batch):
        params = eval_params(state)
        return {tap: self.prototypes(params, tap, t) for tap, t in zip(self.taps, self.teacher(batch))}

    def fit_statistics(self, state: State, outputs: Iterable) -> dict:
        """The coreset of each scale's prototypes: ``model.bank.ratio`` of the patches seen, at most
        ``model.bank.max_size``, selected greedily from a uniform reservoir of ``model.bank.reservoir``
        patches (PatchCore's random projection to ``model.bank.projection_dim`` for the selection)."""
        b = self.config.model.bank
        banks = {
            tap: ReservoirBank(int(b.reservoir), seed=(int(self.config.seed), i)) for i, tap in enumerate(self.taps)
        }
        for out in outputs:
            for tap in self.taps:
                rows = np.asarray(out[tap])
                banks[tap].update(rows.reshape(-1, rows.shape[-1]))
        result = {}
        for tap in self.taps:
            rows = banks[tap].result()
            k = min(int(b.max_size), max(1, math.ceil(float(b.ratio) * banks[tap].seen)), len(rows))
            proj = int(b.projection_dim) or None
            proj = proj if proj is not None and proj < rows.shape[-1] else None
            idx = greedy_coreset(jnp.asarray(rows), k, projection_dim=proj)
            result[tap] = rows[np.asarray(idx)]
        return {"bank": result}

    # ------------------------------------------------------------------ scoring
    def view_maps(self, state: State, feats: Sequence[jax.Array], key: jax.Array, size) -> jax.Array:
        """The fused map ``[B, H, W]`` of one view's teacher features."""
        m = self.config.model
        params = eval_params(state)
        outs, log_vars = self.net.apply(
            {"params": params["net"], "batch_stats": state.model_state["batch_stats"]},
            feats,
            key,
            train=False,
            masked=bool(m.test_masking),
            shared=True,
        )
        maps = []
        for tap, s, t in zip(self.taps, outs, feats):
            score = cosine_distance(s, t)
            if self.has_statistics:
                b, h, w, _ = t.shape
                bank_rows = jnp.asarray(state.stats["bank"][tap])
                # per sample (static h*w queries): the batch axis may be symbolic in an exported scorer
                knn = jax.vmap(lambda q, rows=bank_rows: knn_score(q, rows, k=int(m.bank.k)))
                bank = knn(self.prototypes(params, tap, t)).reshape(b, h, w)
                score = float(m.cos_weight) * score + (1.0 - float(m.cos_weight)) * bank
            maps.append(upsample(score, size))
        maps = jnp.stack(maps)
        if m.fusion == "uncertainty":
            weights = uncertainty_weights(log_vars)
        else:
            weights = jnp.full((len(self.taps),), 1.0 / len(self.taps))
        return jnp.tensordot(weights, maps, axes=1)

    def score(self, state: State, batch, rng: jax.Array):
        """``(maps [B, H, W], scores [B])``: the fused maps averaged over the TTSA views (the teacher run on
        each view here; the cached features without TTSA), smoothed; image score = the maximum.

        The test-time masks and the TTSA phase noise are a fixed function of ``model.score_seed``, the
        same for every image (``rng`` is not used): an image's score then depends on the image alone,
        not on the batch it comes in or its place there, so ``--mode=eval``, ``--mode=predict`` and an
        exported scorer agree image for image."""
        del rng
        m = self.config.model
        size = tuple(batch["image"].shape[1:3])
        k_views, k_masks = jax.random.split(jax.random.PRNGKey(int(m.get("score_seed", 0))))
        n = int(m.ttsa.views)
        if n <= 0:
            fused = self.view_maps(state, self.teacher(batch), k_masks, size)
        else:
            x = to_float(batch["image"])
            sigma = float(m.ttsa.sigma)
            # the same n phase perturbations for every image: ttsa_views of each image alone
            views = jax.vmap(lambda xi: ttsa_views(xi[None], k_views, n=n, sigma=sigma)[:, 0], out_axes=1)(x)
            views = jnp.clip(views, 0.0, 1.0)
            variables = self._teacher_variables()
            fused = 0.0
            for v in range(n):
                feats = self.extractor.apply(variables, views[v])
                key = jax.random.fold_in(k_masks, v)
                fused = fused + self.view_maps(state, [feats[t] for t in self.taps], key, size)
            fused = fused / n
        maps = gaussian_smooth(fused, float(m.smooth_sigma))
        return maps, jnp.max(maps, axis=(1, 2))

    def _teacher_variables(self):
        if not hasattr(self, "_teacher_vars"):
            # host arrays: constants of the compiled scorer, replicated wherever it runs
            self._teacher_vars = jax.tree_util.tree_map(np.asarray, self.extractor.variables)
        return self._teacher_vars
