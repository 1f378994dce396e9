"""Global filters: the FFT filter is a circular convolution with an exactly scaled kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow_ad.spectral import filter_kernel, global_filter, mix_filter_bank


def circular_conv(x, k):
    """float64 ``y[b, h, w, c] = sum_{a, d} k[b, a, d, c] x[b, h - a, w - d, c]`` (indices mod H, W)."""
    x = np.asarray(x, np.float64)
    k = np.asarray(k, np.float64)
    y = np.zeros(np.broadcast_shapes(x.shape, k.shape))
    for a in range(x.shape[1]):
        for d in range(x.shape[2]):
            y += k[:, a : a + 1, d : d + 1, :] * np.roll(x, (a, d), axis=(1, 2))
    return y


def _random_complex(rng, shape):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


SIZES = [(6, 8), (5, 7)]


@pytest.mark.parametrize("size", SIZES)
def test_real_kernel_filter_is_circular_convolution(size):
    """weight = rfft2 of a real kernel (backward norm): the filter convolves with exactly that kernel."""
    h, w = size
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    k = rng.normal(size=(2, h, w, 3))
    weight = np.fft.rfft2(k, axes=(1, 2)).astype(np.complex64)
    np.testing.assert_allclose(filter_kernel(jnp.asarray(weight), size), k, atol=1e-5)
    y = np.asarray(global_filter(jnp.asarray(x), jnp.asarray(weight)))
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, circular_conv(x, k), atol=2e-4)
    # a delta at the origin is the identity; at (1, 2) a circular shift
    delta = np.zeros((1, h, w, 3))
    delta[0, 1, 2] = 1.0
    shifted = global_filter(jnp.asarray(x), jnp.asarray(np.fft.rfft2(delta, axes=(1, 2)), jnp.complex64))
    np.testing.assert_allclose(shifted, np.roll(x, (1, 2), axis=(1, 2)), atol=1e-5)


@pytest.mark.parametrize("size", SIZES)
def test_complex_weight_filter_is_circular_convolution_with_irfft2(size):
    """Any complex weight: the output is the circular convolution with irfft2(weight) (backward norm)."""
    h, w = size
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    weight = _random_complex(rng, (1, h, w // 2 + 1, 3))  # broadcast over the batch
    k_ref = np.fft.irfft2(weight.astype(np.complex128), s=size, axes=(1, 2))
    k = np.asarray(filter_kernel(jnp.asarray(weight), size))
    np.testing.assert_allclose(k, k_ref, atol=1e-6)
    # the ortho scaling, explicitly: the kernel is irfft2 with norm="ortho" divided by sqrt(HW)
    np.testing.assert_allclose(k * np.sqrt(h * w), np.fft.irfft2(weight, s=size, axes=(1, 2), norm="ortho"), atol=1e-5)
    y = np.asarray(global_filter(jnp.asarray(x), jnp.asarray(weight)))
    np.testing.assert_allclose(y, circular_conv(x, k_ref), atol=2e-4)


@pytest.mark.parametrize("size", SIZES)
def test_only_the_hermitian_part_of_self_conjugate_columns_matters(size):
    """Column v = 0 (and v = W/2 for even W) of a half spectrum is self-conjugate: only its Hermitian
    part along u, (W[u] + conj W[-u]) / 2, reaches the output. Other columns are used as they are."""
    h, w = size
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(1, h, w, 2)).astype(np.float32))
    weight = _random_complex(rng, (1, h, w // 2 + 1, 2))
    base = np.asarray(global_filter(x, jnp.asarray(weight)))
    self_conj = [0] + ([w // 2] if w % 2 == 0 else [])
    # the kernel's spectrum equals the weight with those columns projected on their Hermitian part
    spec = np.fft.rfft2(np.asarray(filter_kernel(jnp.asarray(weight), size), np.float64), axes=(1, 2))
    expected = weight.astype(np.complex128).copy()
    for v in self_conj:
        col = weight[:, :, v].astype(np.complex128)
        expected[:, :, v] = 0.5 * (col + np.conj(np.roll(col[:, ::-1], 1, axis=1)))  # conj W[-u]
    np.testing.assert_allclose(spec, expected, atol=1e-5)
    # an anti-Hermitian perturbation (i * real Hermitian-symmetric) of those columns changes nothing
    for v in self_conj:
        bumped = weight.copy()
        bumped[0, 0, v] += 0.7j  # imaginary part of a self-conjugate bin (u = 0)
        if h % 2 == 0:
            bumped[0, h // 2, v] += 0.3j  # and of the u = H/2 bin
        bumped[0, 1, v] += 0.5j  # i*c at u and at -u: anti-Hermitian
        bumped[0, h - 1, v] += 0.5j
        np.testing.assert_allclose(global_filter(x, jnp.asarray(bumped)), base, atol=1e-5)
    # the same perturbation of an interior column does change the output
    bumped = weight.copy()
    bumped[0, 0, 1] += 0.7j
    assert np.abs(np.asarray(global_filter(x, jnp.asarray(bumped))) - base).max() > 1e-2


def test_mix_filter_bank_matches_loop_and_is_linear():
    rng = np.random.default_rng(3)
    u, v, n, b, c = 4, 3, 3, 2, 5
    bank = _random_complex(rng, (u, v, n))
    routing = rng.random((b, n, c)).astype(np.float32)
    got = np.asarray(mix_filter_bank(jnp.asarray(bank), jnp.asarray(routing)))
    assert got.shape == (b, u, v, c) and got.dtype == np.complex64
    ref = np.zeros((b, u, v, c), np.complex128)
    for bi in range(b):
        for ci in range(c):
            for ni in range(n):
                ref[bi, :, :, ci] += routing[bi, ni, ci] * bank[:, :, ni]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # a real bank stays real
    real = np.asarray(mix_filter_bank(jnp.asarray(bank.real), jnp.asarray(routing)))
    assert real.dtype == np.float32
    np.testing.assert_allclose(real, ref.real, atol=1e-5)
    with pytest.raises(ValueError, match="same N"):
        mix_filter_bank(jnp.asarray(bank), jnp.zeros((b, n + 1, c)))


def test_global_filter_linearity_and_jit():
    rng = np.random.default_rng(4)
    h, w = 5, 6
    x1, x2 = (jnp.asarray(rng.normal(size=(2, h, w, 3)).astype(np.float32)) for _ in range(2))
    w1, w2 = (jnp.asarray(_random_complex(rng, (2, h, w // 2 + 1, 3))) for _ in range(2))
    f = jax.jit(global_filter)
    np.testing.assert_allclose(f(2.0 * x1 - 3.0 * x2, w1), 2.0 * f(x1, w1) - 3.0 * f(x2, w1), atol=1e-4)
    np.testing.assert_allclose(f(x1, w1 + 0.5 * w2), f(x1, w1) + 0.5 * f(x1, w2), atol=1e-4)
    with pytest.raises(ValueError, match="half-spectrum"):
        global_filter(x1, jnp.zeros((1, h, w, 3), jnp.complex64))
