"""FAIR high-pass filters: responses at chosen frequencies and filtering behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow_ad.spectral import filters


def test_distance_centre_and_corner():
    d = np.asarray(filters.frequency_distance((8, 6)))
    assert d.shape == (8, 6)
    assert d[4, 3] == 0.0  # fftshift puts DC at (H//2, W//2)
    np.testing.assert_allclose(d[0, 0], np.hypot(4, 3))
    # the zero frequency really sits where fftshift puts it
    spec = np.fft.fftshift(np.fft.fft2(np.ones((8, 6))))
    assert np.unravel_index(np.abs(spec).argmax(), spec.shape) == (4, 3)


@pytest.mark.parametrize("order", [1, 2, 3, 8])
def test_butterworth_response(order):
    h = np.asarray(filters.butterworth_highpass((64, 64), cutoff=10.0, order=order))
    d = np.asarray(filters.frequency_distance((64, 64)))
    # exact values at D = D0 (half power point), DC and far away
    at_cut = h[32, 32 + 10]
    np.testing.assert_allclose(at_cut, 0.5, atol=1e-6)
    assert h[32, 32] < 1e-12
    with np.errstate(over="ignore"):
        expected = 1.0 / (1.0 + (10.0 / np.maximum(d, 1e-6)) ** (2 * order))
    np.testing.assert_allclose(h, expected, atol=1e-6)
    assert np.all(np.isfinite(h))
    # monotone in D
    order_idx = np.argsort(d.ravel())
    assert np.all(np.diff(h.ravel()[order_idx]) >= -1e-7)


def test_gaussian_and_ideal_response():
    g = np.asarray(filters.gaussian_highpass((64, 64), cutoff=10.0))
    np.testing.assert_allclose(g[32, 42], 1 - np.exp(-0.5), atol=1e-6)
    assert g[32, 32] == 0.0
    i = np.asarray(filters.ideal_highpass((64, 64), cutoff=10.0))
    assert i[32, 42] == 0.0 and i[32, 43] == 1.0 and i[32, 32] == 0.0


def test_official_formula_at_256():
    """The official BHPF mask, recomputed in float64 as the official code does (d=30, n=2)."""
    rows = cols = 256
    y, x = np.ogrid[:rows, :cols]
    dist = np.sqrt((x - 128) ** 2 + (y - 128) ** 2)
    ref = 1 / (1 + (30 / (dist + 1e-6)) ** 4)
    np.testing.assert_allclose(np.asarray(filters.butterworth_highpass((256, 256))), ref, atol=1e-6)


@pytest.mark.parametrize("kind", ["butterworth", "gaussian", "ideal"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_constant_image_is_removed(kind, per_channel):
    img = jnp.full((2, 16, 16, 3), 0.7, jnp.float32)
    out = filters.highpass_filter(img, kind=kind, cutoff=4.0, per_channel=per_channel)
    assert out.shape == ((2, 16, 16, 3) if per_channel else (2, 16, 16, 1))
    np.testing.assert_allclose(np.asarray(out), 0.0, atol=1e-6)


def test_matches_numpy_pipeline_and_keeps_high_frequencies():
    rng = np.random.default_rng(0)
    img = rng.random((1, 32, 32, 3)).astype(np.float32)
    out = np.asarray(jax.jit(lambda x: filters.highpass_filter(x, cutoff=6.0))(img))[0, ..., 0]
    gray = img[0] @ np.array([0.299, 0.587, 0.114])
    y, x = np.ogrid[:32, :32]
    mask = 1 / (1 + (6.0 / (np.sqrt((x - 16) ** 2 + (y - 16) ** 2) + 1e-6)) ** 4)
    ref = np.real(np.fft.ifft2(np.fft.ifftshift(np.fft.fftshift(np.fft.fft2(gray)) * mask)))
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # a checkerboard (Nyquist frequency, D = 16*sqrt(2)) passes almost unchanged
    cb = ((np.indices((32, 32)).sum(0) % 2) * 1.0).astype(np.float32)
    hp = np.asarray(filters.highpass_filter(jnp.asarray(cb)[None, ..., None], cutoff=6.0))[0, ..., 0]
    gain = 1 / (1 + (6.0 / (16 * np.sqrt(2))) ** 4)
    np.testing.assert_allclose(hp, (cb - 0.5) * gain, atol=1e-5)


def test_grayscale_uses_bt601_weights():
    img = jnp.zeros((1, 8, 8, 3)).at[..., 0].set(1.0)
    np.testing.assert_allclose(np.asarray(filters.rgb_to_gray(img)), 0.299, atol=1e-7)
    with pytest.raises(ValueError, match="unknown high-pass"):
        filters.highpass_transfer("box", (8, 8))
