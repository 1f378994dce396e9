"""deform_conv2d (DCNv2) against plain convolutions, a NumPy bilinear loop and finite differences; DeformConv2d."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from jaxflow_ad.nn.deform_conv import DeformConv2d, deform_conv2d

DN = ("NHWC", "HWIO", "NHWC")
B, H, W, CIN, COUT = 2, 6, 7, 3, 4


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _data(seed, k=3, b=B, h=H, w=W, cin=CIN, cout=COUT, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, h, w, cin)).astype(dtype)
    kernel = rng.standard_normal((k, k, cin, cout)).astype(dtype)
    return rng, x, kernel


def _plain_conv(x, kernel, pad=1, dil=1):
    return lax.conv_general_dilated(
        x, kernel, (1, 1), [(pad, pad), (pad, pad)], rhs_dilation=(dil, dil), dimension_numbers=DN
    )


def _conv_shifted(x, kernel, dy, dx, pad=1):
    """The plain conv of x moved by (dy, dx): out(p) = sum_t W_t x(p + p_t + (dy, dx)), zero outside the image.

    Built explicitly: zero-pad x in NumPy by more than the shift, cut the window the shifted conv reads, VALID conv.
    (A SAME conv of a shifted H x W image would wrongly zero the taps that the shift brings back inside.)
    """
    x = np.asarray(x)
    h, w = x.shape[1:3]
    m = pad + max(abs(dy), abs(dx))
    xp = np.pad(x, ((0, 0), (m, m), (m, m), (0, 0)))
    window = xp[:, m + dy - pad : m + dy - pad + h + 2 * pad, m + dx - pad : m + dx - pad + w + 2 * pad]
    return lax.conv_general_dilated(window, kernel, (1, 1), "VALID", dimension_numbers=DN)


def _numpy_reference(x, offset, mask, kernel, pad, dil):
    """Explicit loop: bilinear sample of every tap, corners outside the image contribute zero, then the kernel."""
    x, offset, kernel = (np.asarray(a, np.float64) for a in (x, offset, kernel))
    b, h, w, _ = x.shape
    k = kernel.shape[0]
    n = k * k
    ho, wo = offset.shape[1:3]
    mask = np.ones((b, ho, wo, n)) if mask is None else np.asarray(mask, np.float64)
    y = np.zeros((b, ho, wo, kernel.shape[3]))
    for bi in range(b):
        for oy in range(ho):
            for ox in range(wo):
                for t in range(n):
                    i, j = divmod(t, k)
                    sy = oy - pad + i * dil + offset[bi, oy, ox, t]
                    sx = ox - pad + j * dil + offset[bi, oy, ox, n + t]
                    y0, x0 = int(np.floor(sy)), int(np.floor(sx))
                    val = np.zeros(x.shape[3])
                    for cy, wy in ((y0, 1 - (sy - y0)), (y0 + 1, sy - y0)):
                        for cx, wx in ((x0, 1 - (sx - x0)), (x0 + 1, sx - x0)):
                            if 0 <= cy < h and 0 <= cx < w:
                                val += wy * wx * x[bi, cy, cx]
                    y[bi, oy, ox] += mask[bi, oy, ox, t] * val @ kernel[i, j]
    return y


@pytest.mark.parametrize("k,pad,dil", [(3, 1, 1), (5, 2, 1), (3, 2, 2), (3, 0, 1)])
def test_zero_offsets_and_unit_mask_are_the_plain_conv(k, pad, dil):
    _, x, kernel = _data(0, k)
    ho, wo = H + 2 * pad - dil * (k - 1), W + 2 * pad - dil * (k - 1)
    offset = np.zeros((B, ho, wo, 2 * k * k), np.float32)
    ref = _plain_conv(x, kernel, pad, dil)
    y_none = deform_conv2d(x, offset, None, kernel, padding=pad, dilation=dil)
    y_ones = deform_conv2d(x, offset, np.ones((B, ho, wo, k * k), np.float32), kernel, padding=pad, dilation=dil)
    assert y_none.shape == ref.shape == (B, ho, wo, COUT)
    assert _rel(y_none, ref) < 1e-5
    assert _rel(y_ones, ref) < 1e-5


@pytest.mark.parametrize("dy,dx", [(1, 0), (0, -2), (-1, 2), (3, 3)])
def test_constant_integer_offset_is_the_conv_of_the_shifted_input(dy, dx):
    _, x, kernel = _data(1)
    offset = np.concatenate([np.full((B, H, W, 9), dy), np.full((B, H, W, 9), dx)], -1).astype(np.float32)
    y = deform_conv2d(x, offset, None, kernel)
    ref = _conv_shifted(x, kernel, dy, dx)
    assert _rel(y, ref) < 1e-5
    assert _rel(y, _plain_conv(x, kernel)) > 0.1  # the shift matters


@pytest.mark.parametrize("axis", ["dx", "dy"])
def test_half_pixel_offset_is_the_mean_of_the_two_neighbouring_shifts(axis):
    _, x, kernel = _data(2)
    half, zero = np.full((B, H, W, 9), 0.5, np.float32), np.zeros((B, H, W, 9), np.float32)
    offset = np.concatenate([zero, half] if axis == "dx" else [half, zero], -1)
    y = deform_conv2d(x, offset, None, kernel)
    shift = (0, 1) if axis == "dx" else (1, 0)
    ref = 0.5 * (_conv_shifted(x, kernel, 0, 0) + _conv_shifted(x, kernel, *shift))
    assert _rel(y, ref) < 1e-5


def test_mask_of_one_half_halves_the_output():
    rng, x, kernel = _data(3)
    offset = rng.uniform(-2.5, 2.5, (B, H, W, 18)).astype(np.float32)
    full = deform_conv2d(x, offset, None, kernel)
    half = deform_conv2d(x, offset, np.full((B, H, W, 9), 0.5, np.float32), kernel)
    assert _rel(half, 0.5 * full) < 1e-6
    assert float(jnp.abs(full).max()) > 0.1


@pytest.mark.parametrize("k,pad,dil", [(3, 1, 1), (5, 2, 1), (3, 2, 2)])
def test_matches_a_numpy_bilinear_loop_with_fractional_offsets_leaving_the_image(k, pad, dil):
    rng, x, kernel = _data(4, k, dtype=np.float64)
    ho, wo = H + 2 * pad - dil * (k - 1), W + 2 * pad - dil * (k - 1)
    offset = rng.uniform(-4.0, 4.0, (B, ho, wo, 2 * k * k))  # many samples fall partly or wholly outside
    mask = rng.uniform(0.0, 1.0, (B, ho, wo, k * k))
    ref = _numpy_reference(x, offset, mask, kernel, pad, dil)
    with jax.enable_x64(True):
        y = np.asarray(
            deform_conv2d(
                jnp.asarray(x), jnp.asarray(offset), jnp.asarray(mask), jnp.asarray(kernel), padding=pad, dilation=dil
            )
        )
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    # the reference really visits the border rule: samples wholly outside the image exist
    rows = np.arange(ho)[None, :, None, None] - pad + dil * (np.arange(k * k) // k) + offset[..., : k * k]
    assert (rows <= -1).any() and (rows >= H).any()


def test_float32_matches_the_numpy_loop_and_jit_matches_eager():
    rng, x, kernel = _data(5)
    offset = rng.uniform(-3.0, 3.0, (B, H, W, 18)).astype(np.float32)
    mask = rng.uniform(0.0, 1.0, (B, H, W, 9)).astype(np.float32)
    y = deform_conv2d(x, offset, mask, kernel)
    assert y.dtype == jnp.float32
    assert _rel(y, _numpy_reference(x, offset, mask, kernel, 1, 1)) < 1e-5
    y_jit = jax.jit(functools.partial(deform_conv2d, padding=1))(x, offset, mask, kernel)
    np.testing.assert_allclose(np.asarray(y_jit), np.asarray(y), rtol=1e-5, atol=1e-5)


def _fractional_offsets(rng, shape):
    """Offsets whose sampling positions are at least 0.15 from an integer, where bilinear weights are smooth."""
    return rng.integers(-3, 3, shape) + rng.uniform(0.15, 0.85, shape)


def test_offset_gradient_matches_central_differences():
    rng, x, kernel = _data(6, b=1, h=4, w=5, cin=2, cout=3, dtype=np.float64)
    offset = _fractional_offsets(rng, (1, 4, 5, 18))
    mask = rng.uniform(0.2, 1.0, (1, 4, 5, 9))
    cot = rng.standard_normal((1, 4, 5, 3))
    eps = 1e-6
    with jax.enable_x64(True):

        def f(o):
            return jnp.sum(deform_conv2d(x, o, mask, kernel) * cot)

        grad = np.asarray(jax.grad(f)(jnp.asarray(offset)))
        basis = np.eye(offset.size).reshape(offset.size, *offset.shape)
        vf = jax.jit(jax.vmap(f))
        fd = (np.asarray(vf(offset + eps * basis)) - np.asarray(vf(offset - eps * basis))) / (2 * eps)
    assert grad.dtype == np.float64
    np.testing.assert_allclose(grad.ravel(), fd, rtol=1e-6, atol=1e-8)
    assert np.abs(grad).max() > 0.1
    assert (grad == 0).any()  # samples wholly outside the image have no offset gradient


def test_gradients_of_all_four_arguments():
    rng, x, kernel = _data(7, b=1, h=4, w=4, cin=2, cout=2, dtype=np.float64)
    offset = _fractional_offsets(rng, (1, 4, 4, 18))
    mask = rng.uniform(0.2, 1.0, (1, 4, 4, 9))
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a) for a in (x, offset, mask, kernel))
        check_grads(jax.jit(deform_conv2d), args, order=1, modes=("rev",), eps=1e-5)


@pytest.mark.parametrize("tap", [1, 5])  # (i, j) = (0, 1) and (1, 2): not symmetric, so rows/columns and order differ
@pytest.mark.parametrize("channel", ["row", "col"])
def test_offset_layout_is_k_rows_then_k_columns_with_taps_row_major(tap, channel):
    _, x, kernel = _data(8)
    offset = np.zeros((B, H, W, 18), np.float32)
    offset[..., tap if channel == "row" else 9 + tap] = 1.0
    y = deform_conv2d(x, offset, None, kernel)

    def expected(t, dy, dx):
        i, j = divmod(t, 3)
        only = np.zeros_like(kernel)
        only[i, j] = kernel[i, j]
        return _plain_conv(x, kernel - only) + _conv_shifted(x, only, dy, dx)

    dy, dx = (1, 0) if channel == "row" else (0, 1)
    assert _rel(y, expected(tap, dy, dx)) < 1e-5
    # and the test tells the wrong layouts apart: other direction, column-major taps, interleaved (dy, dx) pairs
    transposed = 3 * (tap % 3) + tap // 3
    assert _rel(y, expected(tap, dx, dy)) > 0.05
    assert _rel(y, expected(transposed, dy, dx)) > 0.05
    ch = tap if channel == "row" else 9 + tap
    assert _rel(y, expected(ch // 2, *((1, 0) if ch % 2 == 0 else (0, 1)))) > 0.05


def test_shape_errors_name_the_expected_shape():
    _, x, kernel = _data(9)
    with pytest.raises(ValueError, match=r"offset must be \(2, 6, 7, 18\)"):
        deform_conv2d(x, np.zeros((B, H, W, 9), np.float32), None, kernel)
    with pytest.raises(ValueError, match=r"mask must be \(2, 6, 7, 9\)"):
        deform_conv2d(x, np.zeros((B, H, W, 18), np.float32), np.ones((B, H, W, 18), np.float32), kernel)


def _module_setup(seed=10, **kw):
    _, x, _ = _data(seed)
    layer = DeformConv2d(COUT, **kw)
    return layer, x, layer.init(jax.random.key(seed), x)["params"]


def test_module_param_tree_and_initialisation():
    layer, x, params = _module_setup()
    shapes = jax.tree.map(lambda a: a.shape, params)
    assert shapes == {
        "offset_conv": {"kernel": (3, 3, CIN, 18), "bias": (18,)},
        "mask_conv": {"kernel": (3, 3, CIN, 9), "bias": (9,)},
        "kernel": (3, 3, CIN, COUT),
        "bias": (COUT,),
    }
    bound = 1.0 / np.sqrt(9 * CIN)
    for name in ("offset_conv", "mask_conv"):
        assert not np.asarray(params[name]["kernel"]).any()
        bias = np.asarray(params[name]["bias"])
        assert np.abs(bias).max() <= bound and np.abs(bias).min() > 0  # small, nonzero PyTorch-default bias
    assert np.abs(np.asarray(params["kernel"])).max() <= bound and np.asarray(params["kernel"]).std() > 0.2 * bound
    assert np.abs(np.asarray(params["bias"])).max() <= bound
    dcn1 = DeformConv2d(COUT, ksize=5, use_bias=False, modulated=False).init(jax.random.key(0), x)["params"]
    assert jax.tree.map(lambda a: a.shape, dcn1) == {
        "offset_conv": {"kernel": (5, 5, CIN, 50), "bias": (50,)},
        "kernel": (5, 5, CIN, COUT),
    }


def test_module_with_zero_side_biases_is_half_the_plain_conv_plus_bias():
    layer, x, params = _module_setup()
    params = {**params}
    for name in ("offset_conv", "mask_conv"):
        params[name] = {**params[name], "bias": jnp.zeros_like(params[name]["bias"])}
    y = layer.apply({"params": params}, x)
    # offsets 0, mask sigmoid(0) = 1/2 on every tap: y = conv(x, kernel) / 2 + bias (the bias is not modulated)
    ref = 0.5 * _plain_conv(x, params["kernel"]) + params["bias"]
    assert y.shape == (B, H, W, COUT)
    assert _rel(y, ref) < 1e-5


def test_module_at_default_init_uses_the_side_conv_biases_as_offsets_and_mask_logits():
    layer, x, params = _module_setup(11)
    y = layer.apply({"params": params}, x)
    offset = jnp.broadcast_to(params["offset_conv"]["bias"], (B, H, W, 18))
    mask = jax.nn.sigmoid(jnp.broadcast_to(params["mask_conv"]["bias"], (B, H, W, 9)))
    ref = deform_conv2d(x, offset, mask, params["kernel"]) + params["bias"]
    assert _rel(y, ref) < 1e-5
    assert _rel(y, 0.5 * _plain_conv(x, params["kernel"]) + params["bias"]) > 1e-3  # the biases do act


def test_module_jits_and_trains_its_offset_conv():
    layer, x, params = _module_setup(12)
    y = layer.apply({"params": params}, x)
    y_jit = jax.jit(layer.apply)({"params": params}, x)
    np.testing.assert_allclose(np.asarray(y_jit), np.asarray(y), rtol=1e-5, atol=1e-5)

    @jax.jit
    def loss(p):
        return jnp.sum(layer.apply({"params": p}, x) ** 2)

    grads = jax.grad(loss)(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    for name in ("offset_conv", "mask_conv"):
        assert np.abs(np.asarray(grads[name]["kernel"])).max() > 0  # zero kernels still get a learning signal


def test_module_other_odd_kernel_keeps_the_size_and_even_kernel_raises():
    _, x, _ = _data(13)
    layer = DeformConv2d(COUT, ksize=5)
    y = layer.apply(layer.init(jax.random.key(0), x), x)
    assert y.shape == (B, H, W, COUT)
    with pytest.raises(ValueError, match="odd"):
        DeformConv2d(COUT, ksize=4).init(jax.random.key(0), x)
