"""Point-MAE encoder against the golden outputs of the official code (no torch needed).

Golden data: ``<shared>/golden/pointmae_m3dm_g64m32_64x64.npz`` (G=64, M=32,
64x64 organised cloud) and ``pointmae_weights_seed0.npz``; see
``golden/README-pointmae.md`` for how they were made and the expected float32 error.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow_ad.backbones import pointmae
from third_party.checkpoints import read_state_dict
from third_party.keymaps import convert_state_dict

GOLDEN = "pointmae_m3dm_g64m32_64x64.npz"
WEIGHTS = "pointmae_weights_seed0.npz"


@pytest.fixture(scope="module")
def golden(golden_dir):
    paths = [golden_dir / GOLDEN, golden_dir / WEIGHTS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"Point-MAE golden file(s) absent: {missing} (set JAXFLOW_AD_SHARED to the folder holding golden/)")
    g = dict(np.load(paths[0]))
    variables, report = convert_state_dict("pointmae", read_state_dict(paths[1]))
    return g, variables, report


@pytest.fixture(scope="module")
def encoded(golden):
    g, variables, _ = golden
    model = pointmae.PointMAEEncoder(num_group=64, group_size=32)
    return jax.jit(model.apply)(variables, jnp.asarray(g["points"]))


def _close(a, b, rel=1e-4):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(), 1e-12)
    err = np.abs(a - b).max() / scale
    assert err <= rel, f"max |diff| / max |ref| = {err:.2e} > {rel:.0e}"


def test_conversion_counts(golden):
    _, variables, report = golden
    assert report["params"] == 21_825_024  # as golden/README-pointmae.md counts them
    n_stats = sum(np.size(x) for x in jax.tree_util.tree_leaves(variables["batch_stats"]))
    assert n_stats == 2 * (128 + 512)


def test_grouping_exact(golden, encoded):
    g, _, _ = golden
    np.testing.assert_array_equal(np.asarray(encoded["center_idx"]), g["center_idx"])
    np.testing.assert_array_equal(np.asarray(encoded["knn_idx"]), g["knn_idx"])
    np.testing.assert_array_equal(np.asarray(encoded["neighborhood"]), g["neighborhood"])


@pytest.mark.parametrize("name", ["tokens", "pos", "block3_norm", "block7_norm", "block11_norm"])
def test_encoder_taps(golden, encoded, name):
    g, _, _ = golden
    _close(encoded[name], g[name])


def test_every_block_and_features(golden, encoded):
    g, _, _ = golden
    for i in range(12):
        _close(encoded[f"block{i}"], g["blocks_out"][i])
    assert encoded["features"].shape == (64, 1152)
    _close(encoded["features"], g["features"].T)


def test_interpolation_and_pooling(golden):
    g, _, _ = golden
    feats = jnp.asarray(g["features"].T)
    vals, idx, w = pointmae.three_nn_interpolate(g["points"], g["center"], feats, "expanded")
    ok = ~g["interp_ambiguous"]
    np.testing.assert_array_equal(np.asarray(idx)[ok], g["interp_idx"][ok])
    np.testing.assert_allclose(np.asarray(w)[ok], g["interp_weight"][ok], atol=2e-3)
    _, idx_d, w_d = pointmae.three_nn_interpolate(g["points"], g["center"], feats, "direct")
    np.testing.assert_array_equal(np.asarray(idx_d), g["interp_direct_idx"])
    np.testing.assert_allclose(np.asarray(w_d), g["interp_direct_weight"], atol=1e-5)
    # scatter + pools, fed the golden indices/weights so only those steps are compared
    gi, gw = g["interp_idx"], g["interp_weight"]
    v = np.einsum("nk,nkc->nc", gw, g["features"].T[gi])
    dense = pointmae.scatter_to_grid(jnp.asarray(v), jnp.asarray(g["nonzero_indices"]), 64, 64)
    _close(np.moveaxis(np.asarray(dense), -1, 0), g["dense"], 1e-5)
    pooled = pointmae.pool_grid(jnp.asarray(np.moveaxis(g["dense"], 0, -1)), 24)
    _close(np.moveaxis(np.asarray(pooled), -1, 0), g["pooled_24"], 1e-5)


def test_cloud_feature_map_end_to_end(golden):
    """Organised cloud in, M3DM's 24x24 map out, with fixed shapes (padding mask inside)."""
    g, variables, _ = golden
    model = pointmae.PointMAEEncoder(num_group=64, group_size=32)
    fn = jax.jit(functools.partial(pointmae.cloud_feature_map, model, size=24))
    out = fn(variables, jnp.asarray(g["cloud"]))
    pts, valid, flat = (np.asarray(a) for a in pointmae.compact_cloud(jnp.asarray(g["cloud"])))
    n = int(valid.sum())
    np.testing.assert_array_equal(flat[:n], g["nonzero_indices"])
    np.testing.assert_array_equal(np.asarray(out["center_idx"]), g["center_idx"])
    _close(out["features"], g["features"].T)
    dense = np.moveaxis(np.asarray(out["dense"]), -1, 0)
    amb = np.zeros(64 * 64, bool)
    amb[g["nonzero_indices"][g["interp_ambiguous"]]] = True
    keep = ~amb.reshape(64, 64)
    # our float32 expanded distances differ from torch's by an ulp here and there, which moves
    # the 1/d2 weights (README-pointmae.md section 4): hence 2e-3 rather than 1e-4
    _close(dense[:, keep], g["dense"][:, keep], 2e-3)
    _close(np.moveaxis(np.asarray(out["pooled"]), -1, 0), g["pooled_24"], 5e-2)


def test_vmap_keeps_batchnorm_statistics_per_cloud(golden):
    """A batch of clouds under jax.vmap gives each cloud the features it gets alone (reference: B=1)."""
    g, variables, _ = golden
    model = pointmae.PointMAEEncoder(num_group=16, group_size=8)
    a = jnp.asarray(g["points"][:400])
    b = a * 1.5 + 0.01
    fn = jax.jit(jax.vmap(model.apply, in_axes=(None, 0)))  # one compile for all three calls
    mixed = fn(variables, jnp.stack([a, b]))["features"]
    only_a = fn(variables, jnp.stack([a, a]))["features"][0]
    only_b = fn(variables, jnp.stack([b, b]))["features"][1]
    _close(mixed[0], only_a, 1e-5)
    _close(mixed[1], only_b, 1e-5)
