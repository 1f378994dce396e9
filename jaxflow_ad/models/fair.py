"""FAIR: frequency-aware image restoration (Liu, Li, Du, Jiang, Geng, Wang, Zhao; 2023).

Pipeline (paper Fig. 3, Sec. 3):

1. Training only: corrupt the clean image with synthetic anomalies
   (:mod:`jaxflow_ad.data.anomaly_synth`: 25 % large CutPaste, 25 % Perlin/DTD,
   50 % clean, after a random rotation of the clean image with p 0.3 that
   also rotates the target). This runs on the host in :meth:`FAIR.prepare_batch`.
2. Extract the high-frequency component of the grayscale image
   (:func:`extract_high_frequency`): by default the 2nd-order Butterworth
   high-pass with ``D0 = 30`` (paper Eq. 4-6); the paper's ablations are
   selectable with ``model.extractor``: ``"butterworth"`` with any
   ``model.order`` (n-BHPF, Table 7), ``"gaussian"`` (GHPF), ``"ideal"``
   (IHPF), ``"sobel_xy"`` (``[gx, gy]``, Table 9) and ``"sobel_x"``
   (``[gx, gx]``, Table 10; ``model.sobel_ksize=5`` gives ``FAIR_xy5``).
3. Restore the colour image with a vanilla UNet (:mod:`jaxflow_ad.nn.unet`,
   base width ``model.base_width``: 128, or 64/32).
4. Loss (Eq. 7): ``MSE + (1 - SSIM)`` against the clean (possibly rotated)
   image, SSIM with an 11x11 Gaussian window (:mod:`jaxflow_ad.scoring.similarity`).
5. Anomaly map (Eq. 8-10): ``mean21(1 - MSGMS + 3e-4 (Delta a^2 + Delta b^2))``,
   image score = its maximum (:mod:`jaxflow_ad.scoring.fair_score`).

Schedule (paper Sec. 4.3 and official ``train.py``): Adam (lr 1e-4, no weight
decay), batch 8, 800 epochs on MVTec AD (400 on VisA), learning rate x0.2 after
80 % and 90 % of the epochs (``MultiStepLR([0.8 E, 0.9 E], 0.2)`` stepped per
epoch). Here the schedule is per step, built from the steps per epoch the
engine passes to the stage's optimizer factory; the milestones are
``ceil(0.8 E)`` and ``ceil(0.9 E)`` epochs. (The official milestones are floats
compared with an integer epoch counter, so with an epoch count that is not a
multiple of 10 a milestone is never hit; we do not reproduce that.)

Paper vs official code, and our choices:

* Grayscale before filtering (official; the paper does not say): yes, with the
  BT.601 weights; ``model.per_channel=True`` filters RGB channels instead.
* ``D0`` is in frequency-index units (official). ``model.cutoff`` is given at
  ``model.cutoff_reference_size`` (256, the official resolution) and scaled
  with the image height, so ``D0 = 30`` at 256x256 and 7.5 at 64x64; set the
  reference size to 0 to use ``model.cutoff`` as is at every size.
* GHPF/IHPF: not in the official code; written from the paper (Eq. 2-3).
* The official target is BGR and its Lab conversion takes BGR as RGB; our
  images are RGB and the colour term is proper CIELAB by default
  (``model.score.lab_channel_order="bgr"`` reproduces the official quirk).
* SSIM's dynamic range follows the official rule (inferred from the
  reconstruction; ``train.ssim_data_range=0`` keeps that rule, a positive value
  fixes it).
* Synthetic anomalies: see :mod:`jaxflow_ad.data.anomaly_synth` (the official
  CutPaste quirk is reproduced by default). The Aug-2024 "newaug" loader (NSA
  patches) is not implemented: the paper's numbers predate it.
* The high-pass filtering runs on the accelerator in float32 (official: NumPy
  float64 on the host).
* BatchNorm uses batch statistics of the *global* batch in training (the
  engine shards it; XLA inserts the reduction) and running averages in
  :meth:`FAIR.score` (``model_state["batch_stats"]``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxflow_ad.data import anomaly_synth
from jaxflow_ad.errors import ConfigError
from jaxflow_ad.models.base import Method, Stage, State, to_float
from jaxflow_ad.nn.unet import UNet
from jaxflow_ad.scoring.fair_score import fair_anomaly_map, image_scores
from jaxflow_ad.scoring.similarity import restoration_loss
from jaxflow_ad.spectral.filters import highpass_filter, rgb_to_gray
from jaxflow_ad.spectral.sobel import sobel_features

EXTRACTORS = ("butterworth", "gaussian", "ideal", "sobel_xy", "sobel_x")


def extractor_channels(extractor: str, per_channel: bool = False) -> int:
    """Number of UNet input channels an extractor produces."""
    if extractor in ("sobel_xy", "sobel_x"):
        return 2
    if extractor in ("butterworth", "gaussian", "ideal"):
        return 3 if per_channel else 1
    raise ConfigError(f"unknown model.extractor {extractor!r}; use one of {EXTRACTORS}")


def effective_cutoff(cutoff: float, image_height: int, reference_size: int = 256) -> float:
    """``D0`` at this image size: ``cutoff * H / reference_size`` (``reference_size=0``: ``cutoff`` as is)."""
    return float(cutoff) if not reference_size else float(cutoff) * image_height / float(reference_size)


def extract_high_frequency(
    images: jax.Array,
    extractor: str = "butterworth",
    cutoff: float = 30.0,
    order: float = 2.0,
    per_channel: bool = False,
    sobel_ksize: int = 3,
) -> jax.Array:
    """FAIR's network input from NHWC RGB images in [0, 1] (``cutoff`` in index units at this size)."""
    if extractor in ("butterworth", "gaussian", "ideal"):
        return highpass_filter(images, extractor, cutoff, order, per_channel)
    if extractor in ("sobel_xy", "sobel_x"):
        return sobel_features(rgb_to_gray(images), only_x=extractor == "sobel_x", ksize=sobel_ksize)
    raise ConfigError(f"unknown model.extractor {extractor!r}; use one of {EXTRACTORS}")


def multistep_schedule(
    lr: float, epochs: int, steps_per_epoch: int, milestones=(0.8, 0.9), gamma: float = 0.2
) -> optax.Schedule:
    """Per-step form of ``MultiStepLR([m * epochs for m in milestones], gamma)`` stepped once per epoch.

    Update ``k`` (0-based, optax's count) lies in epoch ``k // steps_per_epoch``;
    the rate is ``lr * gamma^(number of milestone epochs <= that epoch)`` with
    milestone epochs ``ceil(m * epochs)``.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    bounds = [int(math.ceil(m * epochs - 1e-9)) * steps_per_epoch for m in milestones]

    def schedule(count):
        factor = jnp.ones((), jnp.float32)
        for b in bounds:
            factor = factor * jnp.where(count >= b, gamma, 1.0)
        return lr * factor

    return schedule


class FAIR(Method):
    """The FAIR method for the engine (see :mod:`jaxflow_ad.models.base`).

    One stage (``restoration``), no statistics. Batches for :meth:`loss` come from
    :meth:`prepare_batch`: ``{"image": clean target [B,H,W,3], "augmented":
    corrupted [B,H,W,3], "mask": [B,H,W]}``, float32 in [0, 1].
    """

    name = "fair"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        m, t = config.model, config.train
        self.extractor_name = str(m.extractor)
        self.in_channels = extractor_channels(self.extractor_name, bool(m.get("per_channel", False)))
        self.net = UNet(base_width=int(m.base_width), out_channels=3)
        synth = dict(t.synth.items()) if "synth" in t else {}
        texture_root = config.data.get("texture_root", "") if "data" in config else ""
        synth["texture_root"] = texture_root or None
        self.synth_config = anomaly_synth.SynthConfig.from_config(synth)
        rng_range = float(t.get("ssim_data_range", 0.0) or 0.0)
        self.ssim_data_range = rng_range if rng_range > 0 else None
        self.stages = (
            Stage(
                "restoration",
                int(t.epochs),
                self.loss,
                self.optimizer,
                prepare_batch=self.prepare_batch,
                learning_rate=self.learning_rate,
            ),
        )
        self._init = jax.jit(lambda rng, x: self.net.init(rng, x, train=False))

    def learning_rate(self, steps_per_epoch: int) -> optax.Schedule:
        """The exact per-step MultiStep schedule (logged by the engine as ``train/restoration/lr``)."""
        t = self.config.train
        opt = t.optimizer
        return multistep_schedule(
            float(opt.lr), int(t.epochs), steps_per_epoch, tuple(opt.milestones), float(opt.gamma)
        )

    def optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        """Adam (no weight decay) on the MultiStep schedule."""
        return optax.adam(self.learning_rate(steps_per_epoch))

    # -------------------------------------------------------------- pieces
    def extract(self, images: jax.Array) -> jax.Array:
        """The UNet input (high-frequency component) of NHWC RGB images in [0, 1]."""
        m = self.config.model
        cutoff = effective_cutoff(float(m.cutoff), images.shape[1], int(m.get("cutoff_reference_size", 0)))
        return extract_high_frequency(
            images, self.extractor_name, cutoff, float(m.order), bool(m.get("per_channel", False)), int(m.sobel_ksize)
        )

    def reconstruct(self, state: State, images: jax.Array) -> jax.Array:
        """Evaluation-mode restoration ``[B, H, W, 3]`` (running BatchNorm statistics, not clamped)."""
        return self.net.apply({"params": state.params, **state.model_state}, self.extract(images), train=False)

    # -------------------------------------------------------------- training
    def init(self, rng: jax.Array, example_batch) -> State:
        h, w = example_batch["image"].shape[1:3]
        variables = self._init(rng, jnp.zeros((1, h, w, self.in_channels), jnp.float32))
        return State(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            model_state={"batch_stats": variables["batch_stats"]},
            opt_state=(),
            stats={},
        )

    def prepare_batch(self, batch: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Host side: ``data.augment`` (none by default), a random rotation of the clean image (the
        target), then synthetic anomalies."""
        batch = self.augment(batch, rng)
        target = anomaly_synth.random_rotate(to_float(batch["image"]), rng, self.synth_config)
        augmented, mask = anomaly_synth.synthesize(target, rng, self.synth_config)
        return {"image": target, "augmented": augmented, "mask": mask}

    def loss(self, params, state: State, batch, rng) -> tuple[jax.Array, tuple[dict, Any]]:
        """Eq. 7, ``MSE + (1 - SSIM)``, of the restoration of the corrupted image."""
        del rng
        if "augmented" not in batch:
            raise ValueError("FAIR batches need an 'augmented' entry: prepare them with FAIR.prepare_batch")
        x = self.extract(batch["augmented"])
        recon, new_vars = self.net.apply(
            {"params": params, **state.model_state}, x, train=True, mutable=["batch_stats"]
        )
        loss, parts = restoration_loss(recon, batch["image"], data_range=self.ssim_data_range)
        return loss, ({"mse": parts["mse"], "ssim": parts["ssim"]}, {"batch_stats": new_vars["batch_stats"]})

    # -------------------------------------------------------------- scoring
    def score(self, state: State, batch, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(anomaly maps [B, H, W], image scores [B])``; deterministic (``rng`` unused)."""
        del rng
        s = self.config.model.score
        images = to_float(batch["image"])
        recon = self.reconstruct(state, images)
        maps = fair_anomaly_map(
            recon,
            images,
            num_scales=int(s.num_scales),
            gms_c=float(s.gms_c),
            color_weight=float(s.color_weight),
            mean_size=int(s.mean_size),
            channel_order=str(s.lab_channel_order),
        )
        return maps, image_scores(maps)
