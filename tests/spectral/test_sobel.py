"""Sobel gradients: spatial vs frequency form (paper Eq. 16), OpenCV conventions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxflow_ad.spectral import sobel as S


@pytest.mark.parametrize("direction", ["x", "y"])
@pytest.mark.parametrize("ksize", [3, 5])
def test_fft_equals_circular_spatial(direction, ksize):
    rng = np.random.default_rng(1)
    img = jnp.asarray(rng.random((2, 12, 10)), jnp.float32)
    spatial = S.sobel(img, direction, ksize, padding="circular")
    freq = jax.jit(lambda x: S.sobel_fft(x, direction, ksize))(img)
    np.testing.assert_allclose(np.asarray(freq), np.asarray(spatial), atol=1e-5)
    # with OpenCV's reflect-101 border they agree on the interior only
    reflect = S.sobel(img, direction, ksize, padding="reflect101")
    r = ksize // 2
    np.testing.assert_allclose(np.asarray(freq)[:, r:-r, r:-r], np.asarray(reflect)[:, r:-r, r:-r], atol=1e-5)


def test_matches_scipy_reflect101_and_sign():
    rng = np.random.default_rng(2)
    img = rng.random((9, 11)).astype(np.float32)
    gx = np.asarray(S.sobel(jnp.asarray(img), "x"))
    # scipy applies the same correlation taps; its "mirror" mode is reflect-101
    ref = ndimage.sobel(img.astype(np.float64), axis=1, mode="mirror")
    np.testing.assert_allclose(gx, ref, atol=1e-5)
    ramp = jnp.tile(jnp.arange(8.0), (8, 1))  # increasing with x
    assert np.all(np.asarray(S.sobel(ramp, "x"))[:, 1:-1] == 8.0)  # 2 * (1 + 2 + 1)
    assert np.all(np.asarray(S.sobel(ramp, "y")) == 0.0)


def test_central_difference_transfer_is_eq16():
    n = 16
    f = np.random.default_rng(3).random(n)
    spatial = np.roll(f, -1) - np.roll(f, 1)  # f(x+1) - f(x-1), circular
    via_fft = np.real(np.fft.ifft(np.fft.fft(f) * np.asarray(S.central_difference_transfer(n))))
    np.testing.assert_allclose(via_fft, spatial, atol=1e-5)
    t = np.asarray(S.sobel_transfer((8, 8), "x"))
    assert np.allclose(t[:, 0], 0.0)  # u = 0 axis removed (paper's directionality remark)


def test_sobel_features_channels():
    g = jnp.asarray(np.random.default_rng(4).random((2, 8, 8)), jnp.float32)
    xy = S.sobel_features(g)
    x = S.sobel_features(g, only_x=True)
    assert xy.shape == x.shape == (2, 8, 8, 2)
    np.testing.assert_array_equal(np.asarray(x[..., 0]), np.asarray(x[..., 1]))
    np.testing.assert_array_equal(np.asarray(xy[..., 0]), np.asarray(x[..., 0]))
