"""conv2d(impl="im2col"|"fft"), the tiled FFT conv and the polyphase upsampled conv against lax.conv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxflow_ad.flows.pyramid import nearest_up2
from jaxflow_ad.nn.conv import Conv2D, conv2d, conv2d_fft, conv2d_nearest_up2, resolve_impl, weight_grad_im2col

DN = ("NHWC", "HWIO", "NHWC")


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _ref(x, w, stride, pad):
    return lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=DN)


CASES = [  # (batch, h, w, in, out, k, stride)
    (2, 16, 16, 4, 6, 3, 1),
    (1, 13, 11, 3, 5, 5, 1),
    (2, 20, 18, 5, 7, 7, 1),
    (2, 16, 16, 4, 6, 3, 2),
    (3, 15, 17, 3, 4, 5, 2),
    (1, 22, 20, 6, 5, 7, 2),
]


def _fft_slow(case, impl):
    # the FFT implementations compile slowly on a CPU: one shape of each in the default run, all with -m slow
    slow = impl in ("fft", "fft_grad") and case != CASES[0]
    return pytest.param(*case, impl, marks=pytest.mark.slow) if slow else pytest.param(*case, impl)


@pytest.mark.parametrize(
    "b,h,w,ci,co,k,s,impl", [_fft_slow(c, i) for i in ("im2col", "fft", "fft_grad") for c in CASES]
)
def test_impl_matches_lax_values_and_grads(b, h, w, ci, co, k, s, impl):
    rng = np.random.default_rng(h * 100 + k * 10 + s)
    x = jnp.asarray(rng.standard_normal((b, h, w, ci)), jnp.float32)
    wt = jnp.asarray(rng.standard_normal((k, k, ci, co)) / k, jnp.float32)
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    y_ref = _ref(x, wt, s, pad)
    ct = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)
    loss = lambda f: lambda x, w: jnp.sum(f(x, w) * ct)
    g_ref = jax.grad(loss(lambda x, w: _ref(x, w, s, pad)), argnums=(0, 1))(x, wt)
    f = jax.jit(lambda x, w: conv2d(x, w, s, pad, impl=impl))
    np.testing.assert_array_equal(np.asarray(f(x, wt)), np.asarray(jax.jit(lambda x, w: _ref(x, w, s, pad))(x, wt)))
    g = jax.jit(jax.grad(loss(lambda x, w: conv2d(x, w, s, pad, impl=impl)), argnums=(0, 1)))(x, wt)
    y_diff, _ = jax.vjp(lambda x, w: conv2d(x, w, s, pad, impl=impl), x, wt)  # value when differentiated
    assert _rel(y_diff, y_ref) <= 1e-5
    assert _rel(g[0], g_ref[0]) <= 1e-5
    assert _rel(g[1], g_ref[1]) <= 1e-5


def test_weight_grad_asymmetric_padding_and_small_blocks():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 9, 10, 3)), jnp.float32)
    dy_shape = _ref(x, jnp.zeros((5, 3, 3, 4)), 2, ((1, 2), (0, 1))).shape
    dy = jnp.asarray(rng.standard_normal(dy_shape), jnp.float32)
    ref = jax.vjp(lambda w: _ref(x, w, 2, ((1, 2), (0, 1))), jnp.zeros((5, 3, 3, 4)))[1](dy)[0]
    got = weight_grad_im2col(x, dy, (5, 3), 2, ((1, 2), (0, 1)), block_pixels=7)  # ragged row blocks
    assert _rel(got, ref) <= 1e-5


@pytest.mark.parametrize(
    "k,impl",
    [
        pytest.param(k, impl, marks=pytest.mark.slow) if impl.startswith("fft") and k != 5 else (k, impl)
        for impl in ("xla", "im2col", "fft", "fft_grad")
        for k in (3, 5, 7)
    ],
)
def test_polyphase_upsampled_conv(k, impl):
    rng = np.random.default_rng(k)
    x = jnp.asarray(rng.standard_normal((2, 7, 6, 3)), jnp.float32)
    wt = jnp.asarray(rng.standard_normal((k, k, 3, 4)) / k, jnp.float32)
    pad = ((k // 2, k // 2),) * 2
    ref_f = lambda x, w: _ref(nearest_up2(x), w, 1, pad)
    np.testing.assert_allclose(conv2d_nearest_up2(x, wt, impl), ref_f(x, wt), rtol=1e-5, atol=1e-5)
    ct = jnp.asarray(rng.standard_normal((2, 14, 12, 4)), jnp.float32)
    g_ref = jax.grad(lambda x, w: jnp.sum(ref_f(x, w) * ct), argnums=(0, 1))(x, wt)
    g = jax.grad(lambda x, w: jnp.sum(conv2d_nearest_up2(x, w, impl) * ct), argnums=(0, 1))(x, wt)
    assert _rel(g[0], g_ref[0]) <= 1e-5 and _rel(g[1], g_ref[1]) <= 1e-5


@pytest.mark.parametrize(
    "shape,kshape,pad,tiles",
    [
        ((2, 37, 29, 3, 5), (7, 7), ((3, 3), (3, 3)), None),  # ragged last tiles
        ((1, 16, 40, 4, 2), (5, 3), ((1, 3), (0, 2)), None),  # asymmetric padding, rectangular kernel
        ((2, 24, 24, 2, 3), (3, 3), ((1, 1), (1, 1)), (8, 12)),  # explicit, unequal tiles
        ((1, 9, 9, 2, 2), (7, 7), ((0, 0), (0, 0)), None),  # 'valid'
    ],
)
def test_conv2d_fft_equals_lax(shape, kshape, pad, tiles):
    b, h, w, ci, co = shape
    rng = np.random.default_rng(h + w)
    x = jnp.asarray(rng.standard_normal((b, h, w, ci)), jnp.float32)
    wt = jnp.asarray(rng.standard_normal(kshape + (ci, co)), jnp.float32)
    ref = lax.conv_general_dilated(x, wt, (1, 1), pad, dimension_numbers=DN, precision=lax.Precision.HIGHEST)
    got = conv2d_fft(x, wt, pad, tiles)
    assert got.shape == ref.shape
    assert _rel(got, ref) <= 2e-6


def test_conv2d_fft_rejects_bad_tiles_and_padding():
    x, wt = jnp.zeros((1, 8, 8, 1)), jnp.zeros((7, 7, 1, 1))
    with pytest.raises(ValueError, match="tile"):
        conv2d_fft(x, wt, "SAME", (10, 10))
    with pytest.raises(ValueError, match="non-negative"):
        conv2d_fft(x, wt, ((-1, 0), (0, 0)))


def test_conv2d_module_matches_flax_conv_params_and_values():
    import flax.linen as nn

    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 8, 8, 3)), jnp.float32)
    ref = nn.Conv(5, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
    ours = Conv2D(5, 3, kernel_init=nn.initializers.lecun_normal(), impl="im2col")
    vr, vo = ref.init(jax.random.PRNGKey(3), x), ours.init(jax.random.PRNGKey(3), x)
    np.testing.assert_array_equal(vr["params"]["kernel"], vo["params"]["kernel"])
    np.testing.assert_allclose(ref.apply(vr, x), ours.apply(vo, x), rtol=1e-6, atol=1e-6)


def test_auto_impl_resolves_per_backend():
    assert resolve_impl("auto", "cpu") == "fft"
    assert resolve_impl("auto", "cpu", reversible=True) == "fft_grad"
    assert resolve_impl("auto", "gpu") == resolve_impl("auto", "tpu") == "xla"
    assert resolve_impl("im2col", "gpu") == "im2col"
    # "auto" on this (CPU) run takes the fft gradient: exactly the values of impl="fft"
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((1, 12, 12, 3)), jnp.float32)
    wt = jnp.asarray(rng.standard_normal((5, 5, 3, 4)), jnp.float32)
    g = {i: jax.grad(lambda w, i=i: jnp.sum(conv2d(x, w, 1, "SAME", i) ** 2))(wt) for i in ("auto", "fft", "xla")}
    np.testing.assert_array_equal(g["auto"], g["fft" if jax.default_backend() == "cpu" else "xla"])


def test_unknown_impl_raises():
    with pytest.raises(ValueError, match="model.conv_impl"):
        conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), impl="nope")
