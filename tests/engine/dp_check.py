"""Run by test_data_parallel.py in a subprocess with 2 fake CPU devices: train steps, the statistics
fit and scoring through the mesh (a split of 7 images, so the last batch is padded) equal 1 device."""

import sys

import jax
import numpy as np

from configs import pyramidflow as pf_config
from jaxflow_ad import data
from jaxflow_ad.engine import loop, parallel
from jaxflow_ad.models.pyramidflow import PyramidFlow

assert jax.device_count() == 2, jax.devices()
cfg = pf_config.get_config("smoke")
cfg.model.update(channels=4, stacks=1, ksize=3, levels=3, reversible=sys.argv[1] == "rev")
method = PyramidFlow(cfg)
rng = np.random.default_rng(0)
batches = [rng.random((4, 16, 16, 3), dtype=np.float32) for _ in range(3)]
split = data.Split(
    samples={"image": rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)},
    masks=[np.zeros((16, 16), bool)] * 7,
    labels=np.zeros(7, np.int32),
    defect_types=["good"] * 7,
    paths=[f"{i}.png" for i in range(7)],
)
cfg.eval.batch_size = 2
out = {}
for n in (1, 2):
    mesh = parallel.make_mesh(jax.devices()[:n])
    stage = method.stages[0]
    state = method.init(jax.random.PRNGKey(0), {"image": np.zeros((1, 16, 16, 3), np.uint8)})
    state = parallel.to_replicated(mesh, stage.init_opt(state, 1))
    step = parallel.jit_train_step(mesh, stage.train_step(1))
    losses = []
    for b in batches:
        state, m = step(state, parallel.global_batch(mesh, {"image": b}), jax.random.PRNGKey(1))
        losses.append(float(m["loss"]))  # syncs every step
    if n == 2:
        assert len(jax.tree_util.tree_leaves(state.params)[0].sharding.device_set) == 2
    state = loop.fit_statistics(method, state, split, mesh, 2)
    maps, scores, _ = loop.score_split(method, cfg, state, split, mesh)
    out[n] = (losses, jax.device_get(state), maps)
l1, s1, m1 = out[1]
l2, s2, m2 = out[2]
for a, b in zip(s1.stats["template"], s2.stats["template"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
assert m1.shape == (7, 16, 16)
np.testing.assert_allclose(m1, m2, rtol=1e-4, atol=1e-5)
np.testing.assert_allclose(l1, l2, rtol=1e-5)
for a, b in zip(
    jax.tree_util.tree_leaves((s1.params, s1.model_state)), jax.tree_util.tree_leaves((s2.params, s2.model_state))
):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("OK", l1, l2)
