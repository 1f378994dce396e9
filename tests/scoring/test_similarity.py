"""SSIM, MSGMS and the mean filter against independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from jaxflow_ad.scoring import similarity as sim


def _imgs(seed=0, shape=(2, 24, 24, 3)):
    rng = np.random.default_rng(seed)
    a = rng.random(shape).astype(np.float32)
    b = np.clip(a + 0.2 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    return a, b


def test_ssim_identical_is_one_and_noise_lower():
    a, b = _imgs()
    assert float(sim.ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    s = float(jax.jit(sim.ssim)(a, b))
    assert 0.0 < s < 0.9
    loss, parts = sim.restoration_loss(jnp.asarray(a), jnp.asarray(a))
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and float(parts["mse"]) == 0.0
    loss, parts = sim.restoration_loss(jnp.asarray(b), jnp.asarray(a))
    np.testing.assert_allclose(float(loss), float(np.mean((a - b) ** 2)) + 1 - float(parts["ssim"]), rtol=1e-6)


def test_ssim_map_matches_skimage_on_interior():
    a, b = _imgs(1, (1, 32, 32, 3))
    ours = np.asarray(sim.ssim_map(a, b, data_range=1.0))[0]
    _, ref = structural_similarity(
        a[0].astype(np.float64),
        b[0].astype(np.float64),
        channel_axis=-1,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    np.testing.assert_allclose(ours[5:-5, 5:-5], ref[5:-5, 5:-5], atol=2e-5)


def test_ssim_official_dynamic_range_rule():
    a, b = _imgs(2)
    np.testing.assert_allclose(float(sim.ssim(a, b)), float(sim.ssim(a, b, data_range=1.0)), rtol=1e-6)
    a2 = a * 2.0 - 1.0  # min < -0.5 -> L = 2
    np.testing.assert_allclose(float(sim.ssim(a2, b)), float(sim.ssim(a2, b, data_range=2.0)), rtol=1e-6)
    assert float(sim.official_dynamic_range(jnp.asarray(a) * 255)) == 255.0


def test_msgms_identical_is_zero_and_difference_localised():
    a, _ = _imgs(3, (1, 32, 32, 3))
    np.testing.assert_allclose(np.asarray(sim.msgms_map(a, a)), 0.0, atol=1e-6)
    b = a.copy()
    b[0, 8:14, 8:14] = 0.5
    m = np.asarray(jax.jit(sim.msgms_map)(a, b))[0]
    assert m.shape == (32, 32)
    assert m[8:14, 8:14].mean() > 10 * m[20:, 20:].mean()
    assert m[20:, 20:].max() < 1e-6  # far from the patch, both scales agree


def test_gms_single_scale_matches_scipy():
    a, b = _imgs(4, (1, 16, 16, 1))

    def gm(x):
        kx = np.array([[1, 0, -1]] * 3) / 3.0
        gx = ndimage.correlate(x, kx, mode="constant")
        gy = ndimage.correlate(x, kx.T, mode="constant")
        return np.sqrt(gx**2 + gy**2 + 1e-12)

    g1, g2 = gm(a[0, ..., 0].astype(np.float64)), gm(b[0, ..., 0].astype(np.float64))
    ref = 1 - (2 * g1 * g2 + 0.0026) / (g1**2 + g2**2 + 0.0026 + 1e-12)
    np.testing.assert_allclose(np.asarray(sim.msgms_map(a, b, num_scales=1))[0], ref, atol=1e-5)
    # two scales: the coarse GMS map of 2x2-pooled images, upsampled bilinearly (half-pixel centres)
    a2 = a[0, ..., 0].reshape(8, 2, 8, 2).mean((1, 3))
    b2 = b[0, ..., 0].reshape(8, 2, 8, 2).mean((1, 3))
    h1, h2 = gm(a2.astype(np.float64)), gm(b2.astype(np.float64))
    gms2 = (2 * h1 * h2 + 0.0026) / (h1**2 + h2**2 + 0.0026 + 1e-12)
    up = ndimage.zoom(gms2, 2, order=1, mode="nearest", grid_mode=True)
    ref2 = 1 - ((1 - ref) + up) / 2
    np.testing.assert_allclose(np.asarray(sim.msgms_map(a, b, num_scales=2))[0], ref2, atol=1e-5)


def test_mean_filter_zero_padding():
    m = np.random.default_rng(5).random((2, 30, 30)).astype(np.float32)
    ours = np.asarray(sim.mean_filter(m, 21))
    ref = ndimage.uniform_filter(m.astype(np.float64), size=(1, 21, 21), mode="constant")
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sim.mean_filter(jnp.ones((1, 41, 41)), 21))[0, 20, 20], 1.0, atol=1e-6)
