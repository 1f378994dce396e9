"""A toy two-stage method on samples with an ``xyz`` modality and a frozen extractor, for the contract tests.

Importing this module registers the method (``model.name = "toy_two_stage"``)
and an in-memory layout (``data.layout = "toy_xyz"``). ``python
tests/engine/toy_method.py WORKDIR [key=value ...]`` runs it through the engine
(the kill-and-resume test needs a process to kill).

* Data: 16 px images of a smooth texture; ``xyz`` is a plane whose height
  carries a bump where the image has a defect; test images 0-3 are good, 4-7
  have a bright square (and a bump).
* Extractor: one fixed 3x3 conv (weights from ``model.extractor_seed``), stride 2,
  4 channels. Every execution is counted (``jax.debug.callback``) in
  :data:`CALLS`.
* Stage ``align`` trains ``params["a"]``, a 1x1 map from features to 2 channels,
  so that its first channel predicts the pooled height of ``xyz``.
* Stage ``fit`` trains ``params["b"]`` only, pulling ``b(a(features))`` towards
  the statistics' center (refreshed every epoch): a resumed run gives the same
  numbers only if the statistics were restored with the checkpoint.
* Score: distance to the center, plus ``1e-3 * N(0, 1)`` noise from the key (the
  metrics of two runs agree only if ``score``'s key is deterministic).
"""

from __future__ import annotations

import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxflow_ad import data, models
from jaxflow_ad.backbones import FrozenExtractor
from jaxflow_ad.models.base import Method, Stage, State, eval_params

CALLS = {"batches": 0}
SIZE = 16


def _count(x):
    CALLS["batches"] += 1


class TinyConv(nn.Module):
    @nn.compact
    def __call__(self, x):
        jax.debug.callback(_count, x[0, 0, 0, 0])
        return {"conv": nn.relu(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x))}


def _split(category: str, split: str) -> data.Split:
    n = 8
    rng = np.random.default_rng([0 if split == "train" else 1])
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    base = 0.5 + 0.2 * np.sin(2 * np.pi * (2 * xx[None] + rng.random((n, 1, 1))))
    img = np.stack([base, 0.8 * base, 0.4 + 0 * base], -1) + 0.02 * rng.random((n, SIZE, SIZE, 3))
    height = np.zeros((n, SIZE, SIZE), np.float32)
    labels = np.zeros(n, np.int32)
    masks = [np.zeros((SIZE, SIZE), bool) for _ in range(n)]
    if split == "test":
        for i in range(4, n):
            masks[i][5:10, 6:11] = True
            img[i][masks[i]] = [1.0, 1.0, 1.0]
            height[i][masks[i]] = 0.5
            labels[i] = 1
    xyz = np.stack([np.broadcast_to(xx, height.shape), np.broadcast_to(yy, height.shape), height], -1)
    return data.Split(
        samples={"image": np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8), "xyz": xyz.astype(np.float32)},
        masks=masks,
        labels=labels,
        defect_types=["good" if not lab else "bump" for lab in labels],
        paths=[f"{split}/{i:03d}.png" for i in range(n)],
        split=split,
        category=category,
    )


data.LAYOUTS["toy_xyz"] = data.Reader(
    name="toy_xyz",
    modalities=("image", "xyz"),
    spatial=("image", "xyz"),
    splits=("train", "test"),
    list_categories=lambda root: ["toy"],
    load_split=lambda root, category, split, image_size, **options: _split(category, split),
)
models.REGISTRY["toy_two_stage"] = "tests.engine.toy_method:ToyTwoStage"


class ToyTwoStage(Method):
    name = "toy_two_stage"
    has_statistics = True

    def __init__(self, config):
        super().__init__(config)
        m = config.model
        module = TinyConv()
        kernel = 0.3 * jax.random.normal(jax.random.PRNGKey(int(m.extractor_seed)), (3, 3, 3, 4))
        variables = {"params": {"Conv_0": {"kernel": kernel, "bias": jnp.zeros(4)}}}  # no init call: not counted
        self.extractor = FrozenExtractor(module, variables, ("conv",), "tinyconv", mean=(0.5,) * 3, std=(0.25,) * 3)
        self.notes = ["toy method"]
        e1, e2 = int(config.train.epochs_align), int(config.train.epochs_fit)
        self.stages = (
            Stage(
                "align", e1, self.loss_align, lambda spe: optax.adam(3e-2), trainable=("a",), prepare_batch=self.augment
            ),
            Stage(
                "fit",
                e2,
                self.loss_fit,
                lambda spe: optax.sgd(0.1),
                trainable=("b",),
                prepare_batch=self.slow_augment,
                batch_size=int(config.train.fit_batch_size),
                refresh_statistics_every=1,
                param_ema=0.5,  # scored with the average: it must survive donation, checkpoints and resume
            ),
        )

    def slow_augment(self, batch, rng):
        time.sleep(float(self.config.train.sleep_s))  # room for the kill-and-resume test
        return self.augment(batch, rng)

    def init(self, rng, example_batch) -> State:
        assert example_batch["image"].dtype == np.uint8 and "xyz" in example_batch
        c = example_batch["features"]["conv"].shape[-1]
        ka, kb = jax.random.split(rng)
        params = {"a": 0.1 * jax.random.normal(ka, (c, 2)), "b": jnp.eye(2) + 0.1 * jax.random.normal(kb, (2, 2))}
        return State(step=jnp.zeros((), jnp.int32), params=params, model_state={}, opt_state=(), stats={})

    @staticmethod
    def _embed(params, batch):
        return batch["features"]["conv"] @ params["a"] @ params["b"]

    def _embed_eval(self, state, batch):
        return self._embed(eval_params(state), batch)

    def loss_align(self, params, state, batch, rng):
        f = batch["features"]["conv"] @ params["a"]
        h = batch["xyz"][..., 2]
        target = h.reshape(h.shape[0], f.shape[1], 2, f.shape[2], 2).mean((2, 4))
        mse = jnp.mean((f[..., 0] - target) ** 2)
        return mse, ({"mse": mse}, state.model_state)

    def loss_fit(self, params, state, batch, rng):
        center = state.stats.get("center", jnp.zeros((2,)))
        e = self._embed(params, batch)
        loss = jnp.mean((e - center) ** 2) + 1e-3 * jnp.sum(params["b"] ** 2)
        loss = jnp.where(state.step + 1 == int(self.config.train.nan_step), jnp.nan, loss)  # a divergence on demand
        return loss, ({}, state.model_state)

    def statistics_batch(self, state, batch):
        return self._embed_eval(state, batch).mean((1, 2))

    def fit_statistics(self, state, outputs):
        rows = np.concatenate(list(outputs))
        return {"center": rows.mean(0).astype(np.float32), "count": np.asarray(len(rows), np.int32)}

    def score(self, state, batch, rng):
        e = self._embed_eval(state, batch)
        d = jnp.sqrt(jnp.sum((e - state.stats["center"]) ** 2, -1))
        h, w = batch["image"].shape[1:3]
        maps = jax.image.resize(d, (d.shape[0], h, w), "nearest")
        maps = maps + 1e-3 * jax.random.normal(rng, maps.shape)
        return maps, maps.max((1, 2))


def get_config() -> ml_collections.ConfigDict:
    from configs.common import base_config

    c = base_config("toy_two_stage", augment="flip_rot90", eval_batch_size=4)
    c.data.layout = "toy_xyz"
    c.data.root = "/nonexistent-toy-root"  # never read: the toy reader builds its data in memory
    c.data.image_size = SIZE
    c.data.feature_cache_memory_mb = 0  # features on disk, so that a second run can reuse them
    c.model.extractor_seed = 0
    c.train.epochs_align = 2
    c.train.epochs_fit = 3
    c.train.batch_size = 2
    c.train.fit_batch_size = 4
    c.train.sleep_s = 0.0
    c.train.nan_step = -1  # the 1-based global step whose stage-2 loss is NaN (-1: none)
    c.train.log_every_steps = 1
    c.train.checkpoint_every_steps = 1000  # checkpoints at the stage ends only
    c.eval.num_heatmaps = 1
    return c


def main(argv):
    import logging

    from jaxflow_ad import engine

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    config = get_config()
    for kv in argv[2:]:
        k, v = kv.split("=", 1)
        section, key = k.split(".")
        config[section][key] = type(config[section][key])(v)
    engine.run(config, argv[1], "all")
    print("BATCHES", CALLS["batches"])


if __name__ == "__main__":
    main(sys.argv)
