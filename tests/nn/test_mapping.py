"""Bidirectional mapping networks (NF-BMR's BMR, B-PFM's dual projection) and Eq. 11-14."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow_ad.nn.mapping import (
    BidirectionalMapping,
    BottleneckResidual,
    DualProjection,
    l2_normalize_channels,
    mapping_anomaly_map,
    mapping_loss,
)


def _x(shape, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _paths(tree):
    return {"/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def _norm(tree):
    return float(jnp.sqrt(sum(jnp.sum(l**2) for l in jax.tree_util.tree_leaves(tree))))


def test_residual_block_is_the_identity_when_its_last_conv_is_zero():
    x = _x((2, 5, 5, 8))
    block = BottleneckResidual(8, 3)
    v = block.init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_map(jnp.shape, v["params"]) == {
        "conv0": {"kernel": (1, 1, 8, 3), "bias": (3,)},
        "conv1": {"kernel": (3, 3, 3, 3), "bias": (3,)},
        "conv2": {"kernel": (1, 1, 3, 8), "bias": (8,)},
    }
    out = block.apply(v, x)
    assert float(jnp.abs(out - x).max()) > 1e-3
    assert float(jnp.min(out - x)) >= 0.0  # a ReLU follows the last conv too
    zero = jax.tree_util.tree_map(jnp.zeros_like, v["params"]["conv2"])
    v0 = {"params": dict(v["params"], conv2=zero)}
    np.testing.assert_array_equal(block.apply(v0, x), x)
    with pytest.raises(ValueError, match="width=8"):
        block.apply(v, x[..., :6])


@pytest.mark.parametrize("ksize_io,l2", [(1, False), (3, True)])
def test_bidirectional_mapping_shapes_and_one_shared_block(ksize_io, l2):
    y, z = _x((2, 5, 5, 6), 1), _x((2, 5, 5, 6), 2)
    m = BidirectionalMapping(6, width=8, blocks=2, ksize_io=ksize_io, l2_normalize=l2)
    v = m.init(jax.random.PRNGKey(0), y, z)
    p = v["params"]
    assert set(v) == {"params"} and set(p) == {"tmnn", "smnn", "shared"}
    for side in ("tmnn", "smnn"):  # no copy of the shared block under either direction
        assert set(p[side]) == {"conv_in", "pre_0", "pre_1", "post_0", "post_1", "conv_out"}
        assert p[side]["conv_in"]["kernel"].shape == (ksize_io, ksize_io, 6, 8)
    assert p["shared"]["conv0"]["kernel"].shape == (1, 1, 8, 2)  # bottleneck width // 4
    z_hat, y_hat = m.apply(v, y, z)
    assert z_hat.shape == z.shape and y_hat.shape == y.shape
    np.testing.assert_array_equal(m.apply(v, y, method=m.target_map), z_hat)
    np.testing.assert_array_equal(m.apply(v, z, method=m.source_map), y_hat)
    # the shared block's parameters act in both directions
    v2 = {"params": dict(p, shared=jax.tree_util.tree_map(lambda a: a + 0.5, p["shared"]))}
    z2, y2 = m.apply(v2, y, z)
    assert float(jnp.abs(z2 - z_hat).max()) > 1e-4 and float(jnp.abs(y2 - y_hat).max()) > 1e-4
    if l2:  # inputs normalised over channels: the scale of the input does not matter
        np.testing.assert_allclose(m.apply(v, 3.0 * y, 0.5 * z)[0], z_hat, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["bmr", pytest.param("bpfm", marks=pytest.mark.slow)])
def test_each_direction_trains_the_shared_block_and_only_its_own_path(kind):
    y, z = _x((2, 4, 4, 6), 1), _x((2, 4, 4, 6), 2)
    m = BidirectionalMapping(6, width=8, blocks=1) if kind == "bmr" else DualProjection(6, latent=4)
    v = m.init(jax.random.PRNGKey(0), y, z)
    rest = {k: c for k, c in v.items() if k != "params"}

    def loss(params, direction):
        (z_hat, y_hat), _ = m.apply({"params": params, **rest}, y, z, train=True, mutable=["batch_stats"])
        return jnp.mean((z - z_hat) ** 2) if direction == "target" else jnp.mean((y - y_hat) ** 2)

    for direction, own, other in [("target", "tmnn", "smnn"), ("source", "smnn", "tmnn")]:
        g = jax.grad(loss)(v["params"], direction)
        assert _norm(g["shared"]) > 0 and _norm(g[own]) > 0
        assert _norm(g[other]) == 0.0


def test_dual_projection_layers_and_shared_coder():
    y, z = _x((3, 4, 4, 6), 1), _x((3, 4, 4, 10), 2)
    m = DualProjection(6, latent=4, target_channels=10)
    v = m.init(jax.random.PRNGKey(0), y, z)
    p = v["params"]
    assert set(p) == {"tmnn", "smnn", "shared"}
    assert _paths(p["shared"]) == {"kernel", "bias"} and p["shared"]["kernel"].shape == (1, 1, 8, 4)
    convs = lambda side: (
        [p[side][n]["conv"]["kernel"].shape[2:] for n in ("enc0", "enc1", "dec0", "dec1")]
        + [p[side]["dec2"]["kernel"].shape[2:]]
    )
    # in -> in/2+L -> 2L | shared 2L -> L | L -> 2L -> out/2+L -> out
    assert convs("tmnn") == [(6, 7), (7, 8), (4, 8), (8, 9), (9, 10)]
    assert convs("smnn") == [(10, 9), (9, 8), (4, 8), (8, 7), (7, 6)]
    assert not any("shared" in path for path in _paths(p["tmnn"]) | _paths(p["smnn"]))
    z_hat, y_hat = m.apply(v, y, z)
    assert z_hat.shape == z.shape and y_hat.shape == y.shape


def test_dual_projection_batch_norm_train_and_eval():
    y, z = _x((3, 4, 4, 6), 1), _x((3, 4, 4, 6), 2)
    m = DualProjection(6, latent=4)
    v = m.init(jax.random.PRNGKey(0), y, z)
    # training: batch statistics, running averages updated with PyTorch's momentum 0.1
    (zt, _), upd = m.apply(v, y, z, train=True, mutable=["batch_stats"])
    p0 = v["params"]["tmnn"]["enc0"]["conv"]
    h = np.asarray(y) @ np.asarray(p0["kernel"][0, 0]) + np.asarray(p0["bias"])
    stats = upd["batch_stats"]["tmnn"]["enc0"]["bn"]
    np.testing.assert_allclose(stats["mean"], 0.1 * h.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * h.var(axis=(0, 1, 2)), rtol=1e-4)
    zt1, _ = m.apply(v, y[:1], z[:1], train=True, mutable=["batch_stats"])[0]
    assert float(jnp.abs(zt1 - zt[:1]).max()) > 1e-4  # a sample's output depends on the batch
    # evaluation: running statistics, no dependence on the rest of the batch, no update needed
    v1 = dict(v, **upd)
    ze, _ = m.apply(v1, y, z)
    np.testing.assert_allclose(m.apply(v1, y[:1], z[:1])[0], ze[:1], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(ze - zt).max()) > 1e-4


def test_mapping_loss_and_anomaly_map_match_numpy():
    rng = np.random.default_rng(0)
    y, y_hat, z, z_hat = (rng.normal(size=(2, 3, 4, 5)).astype(np.float32) for _ in range(4))
    ref_loss = np.mean((y - y_hat) ** 2) + np.mean((z - z_hat) ** 2)
    ref_loss_per_sample = np.mean(
        [np.sum((y[b] - y_hat[b]) ** 2) / 60 + np.sum((z[b] - z_hat[b]) ** 2) / 60 for b in range(2)]
    )
    np.testing.assert_allclose(mapping_loss(y, z, y_hat, z_hat), ref_loss, rtol=1e-6)
    np.testing.assert_allclose(ref_loss, ref_loss_per_sample, rtol=1e-6)  # Eq. 11-12 per sample, batch mean
    ref_map = np.zeros((2, 3, 4))
    for b in range(2):
        for i in range(3):
            for j in range(4):
                ref_map[b, i, j] = (
                    np.sum((y[b, i, j] - y_hat[b, i, j]) ** 2) + np.sum((z[b, i, j] - z_hat[b, i, j]) ** 2)
                ) / 2
    np.testing.assert_allclose(mapping_anomaly_map(y, z, y_hat, z_hat), ref_map, rtol=1e-5)


def test_l2_normalize_channels():
    x = np.array([[[[3.0, 4.0], [0.0, 0.0]]]], np.float32)
    np.testing.assert_allclose(l2_normalize_channels(jnp.asarray(x)), [[[[0.6, 0.8], [0.0, 0.0]]]], rtol=1e-6)
