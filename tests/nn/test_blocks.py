"""NHWC blocks: PyTorch operator semantics against NumPy transcriptions of their definitions."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow_ad.nn import blocks


def _nchw(x):
    return np.transpose(x, (0, 3, 1, 2))


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def _torch_pixel_unshuffle_nchw(x, r):
    """PyTorch's PixelUnshuffle on NCHW: out[b, c*r*r + i*r + j, h, w] = x[b, c, h*r + i, w*r + j]."""
    b, c, hh, ww = x.shape
    h, w = hh // r, ww // r
    out = np.zeros((b, c * r * r, h, w), x.dtype)
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                out[:, ch * r * r + i * r + j] = x[:, ch, i::r, j::r]
    return out


def _torch_pixel_shuffle_nchw(x, r):
    """PyTorch's PixelShuffle on NCHW as the reshape/permute of its definition."""
    b, crr, h, w = x.shape
    c = crr // (r * r)
    return x.reshape(b, c, r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(b, c, h * r, w * r)


def _torch_bilinear_nchw(x, out_h, out_w, scale_h=None, scale_w=None):
    """PyTorch's upsample_bilinear2d, align_corners=False, transcribed pixel by pixel in float64.

    ``scale`` is the source/destination ratio PyTorch uses: ``1 / scale_factor`` when a scale
    factor is given, ``in / out`` otherwise. Source coordinates below 0 are clamped to 0; the
    upper neighbour is clamped to the last pixel.
    """
    x = np.asarray(x, np.float64)
    _, _, in_h, in_w = x.shape
    sh = in_h / out_h if scale_h is None else scale_h
    sw = in_w / out_w if scale_w is None else scale_w
    out = np.zeros(x.shape[:2] + (out_h, out_w))
    for oh in range(out_h):
        hr = max((oh + 0.5) * sh - 0.5, 0.0)
        h0 = int(hr)
        hp = 1 if h0 < in_h - 1 else 0
        lh1 = hr - h0
        lh0 = 1.0 - lh1
        for ow in range(out_w):
            wr = max((ow + 0.5) * sw - 0.5, 0.0)
            w0 = int(wr)
            wp = 1 if w0 < in_w - 1 else 0
            lw1 = wr - w0
            lw0 = 1.0 - lw1
            out[:, :, oh, ow] = lh0 * (lw0 * x[:, :, h0, w0] + lw1 * x[:, :, h0, w0 + wp]) + lh1 * (
                lw0 * x[:, :, h0 + hp, w0] + lw1 * x[:, :, h0 + hp, w0 + wp]
            )
    return out


def test_pixel_unshuffle_matches_torch_order_and_round_trips():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 9, 5)).astype(np.float32)
    y = np.asarray(blocks.pixel_unshuffle(jnp.asarray(x), 3))
    assert y.shape == (2, 2, 3, 45)
    np.testing.assert_array_equal(y, _nhwc(_torch_pixel_unshuffle_nchw(_nchw(x), 3)))
    # a hand-checked entry: channel c=1, sub-pixel (i, j) = (2, 0) of output pixel (1, 2)
    assert y[0, 1, 2, 1 * 9 + 2 * 3 + 0] == x[0, 1 * 3 + 2, 2 * 3 + 0, 1]
    back = np.asarray(blocks.pixel_shuffle(jnp.asarray(y), 3))
    np.testing.assert_array_equal(back, x)


def test_pixel_shuffle_matches_torch_definition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4, 12)).astype(np.float32)  # 3 channels x 2 x 2
    y = np.asarray(blocks.pixel_shuffle(jnp.asarray(x), 2))
    assert y.shape == (2, 6, 8, 3)
    np.testing.assert_array_equal(y, _nhwc(_torch_pixel_shuffle_nchw(_nchw(x), 2)))
    np.testing.assert_array_equal(np.asarray(blocks.pixel_unshuffle(jnp.asarray(y), 2)), x)
    with pytest.raises(ValueError, match="divisible"):
        blocks.pixel_shuffle(jnp.zeros((1, 2, 2, 6)), 2)
    with pytest.raises(ValueError, match="divisible"):
        blocks.pixel_unshuffle(jnp.zeros((1, 5, 4, 1)), 2)


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 5, 2)])
def test_downsample2_bilinear_is_torch_half_scale(shape):
    rng = np.random.default_rng(2)
    x = rng.normal(size=shape).astype(np.float32)
    y = np.asarray(blocks.downsample2_bilinear(jnp.asarray(x)))
    h2, w2 = shape[1] // 2, shape[2] // 2
    assert y.shape == (shape[0], h2, w2, shape[3])
    # scale_factor=0.5 -> PyTorch's source/destination scale is exactly 2 (also for odd sizes)
    ref = _nhwc(_torch_bilinear_nchw(_nchw(x), h2, w2, 2.0, 2.0))
    np.testing.assert_allclose(y, ref, atol=1e-6)
    # and it is not jax.image.resize's antialiased downsampling
    aa = np.asarray(jax.image.resize(jnp.asarray(x), y.shape, "bilinear"))
    assert np.abs(aa - ref).max() > 1e-2


def test_upsample_bilinear_matches_torch_formula():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 4, 2)).astype(np.float32)
    y = np.asarray(blocks.resize_bilinear(jnp.asarray(x), (24, 32)))  # x8
    assert y.shape == (2, 24, 32, 2)
    np.testing.assert_allclose(y, _nhwc(_torch_bilinear_nchw(_nchw(x), 24, 32)), atol=1e-6)
    # borders: source coordinates < 0 clamp to the first pixel, beyond the last to the last one
    np.testing.assert_allclose(y[:, :4, :4], np.broadcast_to(x[:, :1, :1], (2, 4, 4, 2)), atol=1e-6)
    np.testing.assert_allclose(y[:, -4:, -4:], np.broadcast_to(x[:, -1:, -1:], (2, 4, 4, 2)), atol=1e-6)
    # a non-integer downsampling to a given size is PyTorch's too (no antialiasing)
    z = rng.normal(size=(1, 7, 9, 2)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(blocks.resize_bilinear(jnp.asarray(z), (3, 4))),
        _nhwc(_torch_bilinear_nchw(_nchw(z), 3, 4)),
        atol=1e-6,
    )


def test_star_relu():
    m = blocks.StarReLU()
    x = jnp.asarray([-2.0, -0.5, 0.0, 0.5, 3.0])
    params = m.init(jax.random.key(0), x)["params"]
    assert params["scale"].shape == () and float(params["scale"]) == 1.0 and float(params["bias"]) == 0.0
    np.testing.assert_allclose(m.apply({"params": params}, x), [0, 0, 0, 0.25, 9.0])
    p2 = {"scale": jnp.float32(2.0), "bias": jnp.float32(-1.0)}
    np.testing.assert_allclose(m.apply({"params": p2}, x), [-1, -1, -1, -0.5, 17.0])


def test_squeeze_excite_formula_and_guard():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 4, 32)).astype(np.float32)
    m = blocks.SqueezeExcite(reduction=16)
    params = m.init(jax.random.key(1), jnp.asarray(x))["params"]
    assert set(params) == {"fc1", "fc2"} and "bias" not in params["fc1"]
    w1, w2 = np.asarray(params["fc1"]["kernel"], np.float64), np.asarray(params["fc2"]["kernel"], np.float64)
    assert w1.shape == (32, 2) and w2.shape == (2, 32)
    s = x.mean(axis=(1, 2))
    gate = 1.0 / (1.0 + np.exp(-(np.maximum(s @ w1, 0.0) @ w2)))
    np.testing.assert_allclose(m.apply({"params": params}, jnp.asarray(x)), x * gate[:, None, None], rtol=1e-5)
    # fewer channels than the reduction: hidden width 1, not 0
    p_small = m.init(jax.random.key(1), jnp.zeros((1, 2, 2, 8)))["params"]
    assert p_small["fc1"]["kernel"].shape == (8, 1)


def test_cbam_formula():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 5, 6, 16)).astype(np.float32)
    m = blocks.CBAM(reduction=4, spatial_kernel=3)
    params = m.init(jax.random.key(2), jnp.asarray(x))["params"]
    w1 = np.asarray(params["mlp_0"]["kernel"], np.float64)
    w2 = np.asarray(params["mlp_1"]["kernel"], np.float64)
    ks = np.asarray(params["spatial"]["kernel"], np.float64)  # [3, 3, 2, 1]
    bs = float(params["spatial"]["bias"][0])
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))
    mlp = lambda v: np.maximum(v @ w1, 0.0) @ w2
    xd = x.astype(np.float64)
    y = xd * sig(mlp(xd.mean(axis=(1, 2))) + mlp(xd.max(axis=(1, 2))))[:, None, None]
    pooled = np.pad(np.stack([y.mean(-1), y.max(-1)], -1), ((0, 0), (1, 1), (1, 1), (0, 0)))
    logit = np.full(y.shape[:3], bs)
    for a in range(3):
        for b in range(3):
            logit += pooled[:, a : a + 5, b : b + 6] @ ks[a, b, :, 0]
    ref = y * sig(logit)[..., None]
    np.testing.assert_allclose(m.apply({"params": params}, jnp.asarray(x)), ref, rtol=1e-4, atol=1e-6)
    res = blocks.CBAM(reduction=4, spatial_kernel=3, residual=True).apply({"params": params}, jnp.asarray(x))
    np.testing.assert_allclose(res, x + ref, rtol=1e-4, atol=1e-5)


def test_conv_transpose_kernel_mapping_equals_flax_conv_transpose():
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(2, 3, 4, 5)).astype(np.float32))
    ref_mod = nn.ConvTranspose(6, (2, 2), strides=(2, 2), padding="VALID", precision=jax.lax.Precision.HIGHEST)
    ref_params = ref_mod.init(jax.random.key(3), x)["params"]
    ref_params = {"kernel": ref_params["kernel"], "bias": jnp.asarray(rng.normal(size=6).astype(np.float32))}
    expected = np.asarray(ref_mod.apply({"params": ref_params}, x))
    assert expected.shape == (2, 6, 8, 6)
    ours = blocks.ConvTranspose2x2(6)
    dense = blocks.conv_transpose_kernel_to_dense(ref_params["kernel"])
    assert dense.shape == (5, 24)
    got = ours.apply({"params": {"kernel": dense, "bias": ref_params["bias"]}}, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # the mapping is not the plain reshape: without the flip the layers disagree
    plain = ref_params["kernel"].transpose(2, 3, 0, 1).reshape(5, 24)
    bad = ours.apply({"params": {"kernel": plain, "bias": ref_params["bias"]}}, x)
    assert np.abs(np.asarray(bad) - expected).max() > 1e-2


def test_conv_transpose2x2_is_torch_scatter_and_init():
    """PyTorch's definition: x[h, w] @ W[:, :, i, j] lands on (2h + i, 2w + j); dense = W.reshape(Cin, 4F)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1, 2, 3, 4))
    w_torch = rng.normal(size=(4, 3, 2, 2))  # [Cin, F, kh, kw]
    bias = rng.normal(size=3)
    expected = np.zeros((1, 4, 6, 3))
    for h in range(2):
        for w in range(3):
            for i in range(2):
                for j in range(2):
                    expected[0, 2 * h + i, 2 * w + j] += x[0, h, w] @ w_torch[:, :, i, j]
    expected += bias
    m = blocks.ConvTranspose2x2(3)
    params = {"kernel": jnp.asarray(w_torch.reshape(4, 12), jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}
    np.testing.assert_allclose(m.apply({"params": params}, jnp.asarray(x, jnp.float32)), expected, rtol=1e-5)
    init = m.init(jax.random.key(4), jnp.zeros((1, 2, 2, 64)))["params"]
    assert init["kernel"].shape == (64, 12) and init["bias"].shape == (3,)
    bound = 1.0 / math.sqrt(12)
    assert np.abs(init["kernel"]).max() <= bound and np.abs(init["kernel"]).max() > 0.8 * bound


def test_positional_encoding_2d_matches_cflow_loop():
    d_model, height, width = 12, 5, 7
    pe = blocks.positional_encoding_2d(d_model, height, width)
    assert pe.dtype == np.float32 and pe.shape == (height, width, d_model)
    d = d_model // 2
    ref = np.zeros((height, width, d_model))
    for k in range(d // 2):
        div = math.exp(2 * k * -(math.log(1e4) / d))
        for hh in range(height):
            for ww in range(width):
                ref[hh, ww, 2 * k] = math.sin(ww * div)
                ref[hh, ww, 2 * k + 1] = math.cos(ww * div)
                ref[hh, ww, d + 2 * k] = math.sin(hh * div)
                ref[hh, ww, d + 2 * k + 1] = math.cos(hh * div)
    np.testing.assert_allclose(pe, ref, atol=1e-6)
    # channel 0 varies along the width only, channel D along the height only
    assert np.ptp(pe[:, 3, 0]) == 0 and np.ptp(pe[2, :, 0]) > 0
    assert np.ptp(pe[3, :, d]) == 0 and np.ptp(pe[:, 2, d]) > 0
    with pytest.raises(ValueError, match="divisible by 4"):
        blocks.positional_encoding_2d(30, 4, 4)
