"""MASF's SAMB (greedy coreset, k-NN score, spectral prototypes) and UGHF (fusion weights, heteroscedastic loss)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow_ad.nn.memory_bank import (
    SpectralAnchor,
    UncertaintyFusion,
    coreset_size,
    coverage_radius,
    fft_magnitude_features,
    fuse_maps,
    greedy_coreset,
    heteroscedastic_loss,
    knn_score,
    sparse_random_projection,
    spectral_prototypes,
    uncertainty_weights,
)


def _np_greedy(x, k, start=0):
    """Reference greedy k-center in float64: the farthest row from the picked set, lowest index on ties."""
    x = np.asarray(x, np.float64)
    picked = [start]
    mind = ((x - x[start]) ** 2).sum(1)
    mind[start] = -np.inf
    for _ in range(k - 1):
        j = int(np.argmax(mind))
        picked.append(j)
        mind = np.minimum(mind, ((x - x[j]) ** 2).sum(1))
        mind[j] = -np.inf
    return np.array(picked)


def _np_knn(q, b, k):
    d = np.sqrt(((q[:, None, :].astype(np.float64) - b[None].astype(np.float64)) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, :k].mean(1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("duplicates", [False, True])
def test_greedy_coreset_equals_float64_numpy(seed, duplicates):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 7)).astype(np.float32)
    if duplicates:  # 20 distinct rows, each three times, shuffled: k = 30 exhausts them
        x = x[rng.permutation(np.repeat(np.arange(20), 3))]
    start = int(rng.integers(60))
    k = 30
    got = np.asarray(greedy_coreset(jnp.asarray(x), k, start=start))
    want = _np_greedy(x, k, start)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int32 and len(set(got.tolist())) == k
    if duplicates:  # the first 20 picks are the 20 distinct rows
        assert len({x[i].tobytes() for i in got[:20]}) == 20


def test_greedy_coreset_with_projection_selects_in_the_projected_space():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 32)).astype(np.float32)
    p = np.asarray(sparse_random_projection(jax.random.PRNGKey(5), 32, 8))
    assert p.shape == (32, 8) and np.mean(p == 0) > 0.5  # density 1/sqrt(32)
    got = np.asarray(greedy_coreset(jnp.asarray(x), 12, start=4, projection_dim=8, seed=5))
    np.testing.assert_array_equal(got, _np_greedy(x.astype(np.float64) @ p, 12, 4))
    again = np.asarray(greedy_coreset(jnp.asarray(x), 12, start=4, projection_dim=8, seed=5))
    np.testing.assert_array_equal(got, again)


def test_coverage_radius_is_non_increasing_in_k_and_prefix_consistent():
    xn = np.random.default_rng(4).normal(size=(100, 5))
    x = jnp.asarray(xn, jnp.float32)
    full = np.asarray(greedy_coreset(x, 40))
    dist = np.sqrt(((xn[full][:, None] - xn[None]) ** 2).sum(-1))  # [40, 100]
    radii = np.minimum.accumulate(dist, axis=0).max(1)  # radius of the first k picks, k = 1..40
    assert np.all(np.diff(radii) <= 0) and radii[-1] < radii[0]
    np.testing.assert_allclose(float(coverage_radius(x, full[:10])), radii[9], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(greedy_coreset(x, 17)), full[:17])
    # the radius of k picks is the distance of pick k + 1 to the first k (the greedy choice)
    np.testing.assert_allclose(radii[:-1], np.minimum.accumulate(dist, axis=0)[np.arange(39), full[1:]], rtol=1e-12)


def test_greedy_coreset_rejects_bad_sizes():
    x = jnp.zeros((5, 2))
    with pytest.raises(ValueError):
        greedy_coreset(x, 6)
    with pytest.raises(ValueError):
        greedy_coreset(x, 2, start=5)
    assert coreset_size(1000) == 100 and coreset_size(10**6) == 3000 and coreset_size(5) == 1
    assert coreset_size(10**6, max_size=None) == 10**5


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("block", [7, 16, 1000])
def test_knn_score_equals_brute_force(k, block):
    rng = np.random.default_rng(k)
    q = rng.normal(size=(37, 6)).astype(np.float32)
    b = rng.normal(size=(23, 6)).astype(np.float32)
    q[0] = b[5]  # exactly on a bank row: distance 0
    got = np.asarray(knn_score(jnp.asarray(q), jnp.asarray(b), k, block=block))
    assert got.shape == (37,) and got.dtype == np.float32
    np.testing.assert_allclose(got, _np_knn(q, b, k), rtol=1e-5, atol=1e-6)
    if k == 1:
        assert got[0] == 0.0


def test_knn_score_is_precise_for_far_away_near_neighbours():
    # a common offset of 100: the ||a||^2 + ||b||^2 - 2ab expansion alone would be off by ~0.1 here
    rng = np.random.default_rng(9)
    b = (100.0 + rng.normal(size=(50, 4))).astype(np.float32)
    q = (b[:20] + 1e-3 * rng.normal(size=(20, 4))).astype(np.float32)
    got = np.asarray(knn_score(jnp.asarray(q), jnp.asarray(b), 1, block=8))
    np.testing.assert_allclose(got, _np_knn(q, b, 1), rtol=1e-3)


def test_fft_magnitude_features_pad_float32_and_shift_invariance():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(2, 3, 4, 10)).astype(np.float32)
    f = np.asarray(fft_magnitude_features(jnp.asarray(p)))
    assert f.shape == p.shape and f.dtype == np.float32
    want = np.abs(np.fft.rfft(p.astype(np.float64), axis=-1, norm="ortho"))
    np.testing.assert_allclose(f[..., :6], want, rtol=1e-5, atol=1e-6)
    assert np.all(f[..., 6:] == 0)
    # circular shifts of the channels do not change the magnitudes
    np.testing.assert_allclose(np.asarray(fft_magnitude_features(jnp.roll(p, 3, axis=-1))), f, rtol=1e-5, atol=1e-5)
    full = np.asarray(fft_magnitude_features(jnp.asarray(p), onesided=False))
    np.testing.assert_allclose((full**2).sum(-1), (p.astype(np.float64) ** 2).sum(-1), rtol=1e-5)  # Parseval
    # float16 inputs whose channel sum overflows float16 stay finite: the FFT runs in float32
    big = jnp.full((3, 64), 6e4, jnp.float16)
    out = fft_magnitude_features(big)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(float(out[0, 0]), 6e4 * 8, rtol=1e-3)  # DC of ortho rfft: sum / sqrt(64)


def test_spectral_prototypes_have_unit_norm():
    rng = np.random.default_rng(1)
    p = jnp.asarray(rng.normal(size=(2, 5, 5, 16)), jnp.float32)
    m = jnp.asarray(rng.normal(size=(2, 5, 5, 16)), jnp.float32)
    proto = spectral_prototypes(p, m)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(proto), axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(proto), np.asarray((p + m) / jnp.linalg.norm(p + m, axis=-1, keepdims=True)), 1e-5, 1e-7
    )
    anchor = SpectralAnchor()
    v = anchor.init(jax.random.PRNGKey(0), p)
    assert jax.tree_util.tree_map(jnp.shape, v["params"]) == {
        "fc0": {"kernel": (16, 16), "bias": (16,)},
        "fc1": {"kernel": (16, 16), "bias": (16,)},
    }
    out = anchor.apply(v, p)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out), axis=-1), 1.0, rtol=1e-5)
    h = nn.gelu(fft_magnitude_features(p) @ v["params"]["fc0"]["kernel"] + v["params"]["fc0"]["bias"], False)
    mlp = h @ v["params"]["fc1"]["kernel"] + v["params"]["fc1"]["bias"]
    np.testing.assert_allclose(np.asarray(out), np.asarray(spectral_prototypes(p, mlp)), rtol=1e-5, atol=1e-6)


def test_uncertainty_weights_and_fusion():
    log_vars = jnp.array([0.5, -1.0, 2.0])
    w = np.asarray(uncertainty_weights(log_vars))
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    assert w[1] > w[0] > w[2] > 0  # smaller log-variance, larger weight
    np.testing.assert_allclose(w, np.exp(-np.array([0.5, -1.0, 2.0])) / np.exp(-np.array([0.5, -1.0, 2.0])).sum(), 1e-6)
    maps = jax.random.uniform(jax.random.PRNGKey(0), (3, 2, 4, 5))
    fused = np.asarray(fuse_maps(maps, log_vars))
    assert fused.shape == (2, 4, 5)
    np.testing.assert_allclose(fused, np.einsum("l,lbhw->bhw", w, np.asarray(maps)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(fuse_maps(list(maps), log_vars)), fused, rtol=1e-6)
    # equal log-variances: the plain mean; a constant map is preserved
    np.testing.assert_allclose(np.asarray(fuse_maps(maps, jnp.zeros(3))), np.asarray(maps).mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(fuse_maps(jnp.ones((3, 1, 2, 2)), log_vars)), 1.0, rtol=1e-6)
    head = UncertaintyFusion(3)
    v = head.init(jax.random.PRNGKey(0), maps)
    np.testing.assert_array_equal(np.asarray(v["params"]["log_vars"]), np.zeros(3))
    np.testing.assert_allclose(np.asarray(head.apply(v, maps)), np.asarray(maps).mean(0), rtol=1e-5)


def test_heteroscedastic_loss_is_minimised_at_log_error():
    errors = jnp.array([0.3, 1.7, 0.05])
    opt = jnp.log(errors)
    grad = jax.grad(heteroscedastic_loss, argnums=1)(errors, opt)
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-6)
    for d in (-0.2, 0.2):
        assert float(heteroscedastic_loss(errors, opt + d)) > float(heteroscedastic_loss(errors, opt))
    # at the optimum the fusion weight is proportional to 1 / err
    w = np.asarray(uncertainty_weights(opt))
    np.testing.assert_allclose(w, (1 / np.asarray(errors)) / (1 / np.asarray(errors)).sum(), rtol=1e-5)
    # detach_errors: no gradient into the errors
    g_err = jax.grad(lambda e: heteroscedastic_loss(e, opt, detach_errors=True))(errors)
    np.testing.assert_array_equal(np.asarray(g_err), 0.0)
    g_err = jax.grad(lambda e: heteroscedastic_loss(e, opt))(errors)
    np.testing.assert_allclose(np.asarray(g_err), 1 / np.asarray(errors), rtol=1e-5)
