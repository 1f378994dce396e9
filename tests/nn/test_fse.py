"""MADFlow's FSE: branch formulas against float64 NumPy, routing, modes and their parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow_ad.nn.fse import FSE, fse_intermediates, gated_sum, routing_softmax, uniform_routing

B, C, N = 2, 4, 3


def _input(h, w, seed=0, c=C):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, h, w, c)).astype(np.float32))


def _random_variables(model, f_in, seed=0, scale=0.3):
    """Variables shaped as ``model.init`` makes them (traced with ``eval_shape``: no compile, no
    random-number kernels), filled with ``N(0, scale^2)`` values; the tests that need the real
    initialisation call ``init``."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), f_in)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), jnp.float32), shapes)


def _f64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _circular_conv(x, k):
    """``y[b, h, w, c] = sum_{a, d} k[b, a, d, c] x[b, (h - a) mod H, (w - d) mod W, c]`` in float64."""
    y = np.zeros(np.broadcast_shapes(x.shape, k.shape))
    for a in range(x.shape[1]):
        for d in range(x.shape[2]):
            y += k[:, a : a + 1, d : d + 1, :] * np.roll(x, (a, d), axis=(1, 2))
    return y


def _conv_same(x, kernel, bias):
    """Zero-padded 'same' convolution (cross-correlation, flax HWIO kernel) in float64."""
    k = kernel.shape[0]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    h, w = x.shape[1:3]
    y = np.zeros(x.shape[:3] + (kernel.shape[-1],)) + bias
    for a in range(k):
        for d in range(k):
            y += xp[:, a : a + h, d : d + w] @ kernel[a, d]
    return y


def _softmax(z, axis):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _x_ref(p, f_in):
    x = f_in @ p["proj_in"]["kernel"] + p["proj_in"]["bias"]
    return p["act"]["scale"] * np.maximum(x, 0.0) ** 2 + p["act"]["bias"]


@pytest.mark.parametrize("size", [(6, 8), (5, 7)])
def test_frequency_branch_is_circular_convolution_with_the_filters_inverse_transform(size):
    h, w = size
    model = FSE(num_filters=N, mode="freq", deformable=False)
    f_in = _input(h, w)
    variables = model.init(jax.random.key(0), f_in)
    out, inter = fse_intermediates(model, variables, f_in)
    p, x_in = _f64(variables["params"]), np.asarray(f_in, np.float64)
    assert set(p) == {"proj_in", "act", "freq_route", "freq_bank", "proj_out"}
    assert p["freq_bank"].shape == (h, w // 2 + 1, N, 2)
    np.testing.assert_allclose(p["freq_bank"].std(), 0.02, rtol=0.25)  # the code's randn * 0.02
    assert p["act"]["scale"] == 1.0 and p["act"]["bias"] == 0.0

    # X = StarReLU(Linear(F_in))
    x = _x_ref(p, x_in)
    np.testing.assert_allclose(inter["x"], x, rtol=1e-5, atol=1e-6)

    # routing: softmax_n GAP(conv1x1 -> ReLU -> conv3x3 -> ReLU -> conv1x1), channel n * C1 + c
    r = p["freq_route"]
    hid = np.maximum(_conv_same(x_in, r["conv_0"]["kernel"], r["conv_0"]["bias"]), 0.0)
    hid = np.maximum(_conv_same(hid, r["conv_1"]["kernel"], r["conv_1"]["bias"]), 0.0)
    logits = hid @ r["conv_2"]["kernel"] + r["conv_2"]["bias"]  # the 1x1 conv at every pixel, then GAP
    routing = _softmax(logits.mean(axis=(1, 2)).reshape(B, N, C), axis=1)
    np.testing.assert_allclose(inter["freq_routing"], routing, rtol=1e-5, atol=1e-6)

    # F_f = X (*) k_{b,c}, k = irfft2(sum_n r[b, n, c] B_f[:, :, n]) with the default (backward) norm
    bank = p["freq_bank"][..., 0] + 1j * p["freq_bank"][..., 1]  # [H, W//2+1, N]
    weight = np.einsum("uvn,bnc->buvc", bank, routing)
    kernel = np.fft.irfft2(weight, s=size, axes=(1, 2))
    f_freq = _circular_conv(x, kernel)
    np.testing.assert_allclose(inter["freq"], f_freq, rtol=1e-4, atol=1e-6)
    assert np.abs(f_freq).max() > 1e-3  # not trivially zero

    # out = Linear(F_f)
    ref_out = f_freq @ p["proj_out"]["kernel"] + p["proj_out"]["bias"]
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-6)


def test_spatial_branch_and_gated_fusion_formulas():
    h, w = 5, 6
    model = FSE(num_filters=N, mode="gate", deformable=False)
    f_in = _input(h, w, seed=1)
    variables = _random_variables(model, f_in, seed=1)
    out, inter = fse_intermediates(model, variables, f_in)
    p, x_in = _f64(variables["params"]), np.asarray(f_in, np.float64)
    x = _x_ref(p, x_in)

    r = p["spatial_route"]
    hid = np.maximum(_conv_same(x_in, r["conv_0"]["kernel"], r["conv_0"]["bias"]), 0.0)
    logits = _conv_same(hid, r["conv_1"]["kernel"], r["conv_1"]["bias"]).mean(axis=(1, 2))
    routing = _softmax(logits.reshape(B, N, C), axis=1)
    np.testing.assert_allclose(inter["spatial_routing"], routing, rtol=1e-5, atol=1e-6)
    f_spatial = x * np.einsum("hwn,bnc->bhwc", p["spatial_bank"], routing)
    np.testing.assert_allclose(inter["spatial"], f_spatial, rtol=1e-4, atol=1e-7)

    f_freq = np.asarray(inter["freq"], np.float64)
    gate = _softmax(np.concatenate([f_freq, f_spatial], -1) @ p["gate"]["kernel"][0, 0] + p["gate"]["bias"], -1)
    fused = gate[..., :1] * f_freq + gate[..., 1:] * f_spatial
    ref_out = fused @ p["proj_out"]["kernel"] + p["proj_out"]["bias"]
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-6)
    # the pure gate helper: logits favouring one branch select it
    big = jnp.concatenate([jnp.full((1, 1, 1, 1), 50.0), jnp.zeros((1, 1, 1, 1))], -1)
    np.testing.assert_allclose(gated_sum(jnp.ones((1, 1, 1, 2)), jnp.zeros((1, 1, 1, 2)), big), 1.0)


def test_routing_is_a_softmax_over_filters_and_uniform_without_dynamic():
    f_in = _input(6, 6, seed=2)
    dyn = FSE(num_filters=N, mode="add", deformable=False)
    _, inter = fse_intermediates(dyn, _random_variables(dyn, f_in, seed=2), f_in)
    for name in ("freq_routing", "spatial_routing"):
        rw = np.asarray(inter[name])
        assert rw.shape == (B, N, C)
        assert (rw > 0).all()
        np.testing.assert_allclose(rw.sum(axis=1), 1.0, atol=1e-6)
        assert np.ptp(rw) > 1e-4  # input-dependent, not constant

    static = FSE(num_filters=N, mode="add", dynamic=False, deformable=False)
    variables = static.init(jax.random.key(2), f_in)
    assert "freq_route" not in variables["params"] and "spatial_route" not in variables["params"]
    np.testing.assert_allclose(np.std(variables["params"]["spatial_bank"]), 0.03, rtol=0.3)  # randn * 0.03
    _, inter = fse_intermediates(static, variables, f_in)
    for name in ("freq_routing", "spatial_routing"):
        np.testing.assert_array_equal(inter[name], np.full((B, N, C), np.float32(1.0 / N)))
    np.testing.assert_array_equal(uniform_routing(2, 4, 3), np.full((2, 4, 3), 0.25, np.float32))

    # the pure softmax reads channel n * C1 + c
    logits = jnp.zeros((1, 6)).at[0, 1 * 3 + 2].set(100.0)  # filter 1, channel 2
    rw = np.asarray(routing_softmax(logits, 2))
    np.testing.assert_allclose(rw[0, :, 2], [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(rw[0, :, 0], [0.5, 0.5])


EXPECTED_PARAMS = {
    "gate": {"proj_in", "act", "freq_route", "freq_bank", "spatial_route", "spatial_bank", "gate", "proj_out"},
    "add": {"proj_in", "act", "freq_route", "freq_bank", "spatial_route", "spatial_bank", "proj_out"},
    "freq": {"proj_in", "act", "freq_route", "freq_bank", "proj_out"},
    "spatial": {"proj_in", "act", "spatial_route", "spatial_bank", "proj_out"},
}


@pytest.mark.parametrize("mode", sorted(EXPECTED_PARAMS))
def test_each_mode_runs_jitted_with_its_parameters_only(mode):
    h, w = 6, 5
    model = FSE(expand=2.0, num_filters=N, mode=mode, deformable=False)
    f_in = _input(h, w, seed=3)
    variables = _random_variables(model, f_in, seed=3)
    params = variables["params"]
    assert set(params) == EXPECTED_PARAMS[mode]
    c1 = 2 * C
    assert params["proj_in"]["kernel"].shape == (C, c1)
    assert params["proj_out"]["kernel"].shape == (c1, C)
    if "freq_bank" in params:
        assert params["freq_bank"].shape == (h, w // 2 + 1, N, 2)
        assert params["freq_route"]["conv_0"]["kernel"].shape == (1, 1, C, C // 2)
        assert params["freq_route"]["conv_1"]["kernel"].shape == (3, 3, C // 2, C // 2)
        assert params["freq_route"]["conv_2"]["kernel"].shape == (C // 2, N * c1)
    if "spatial_bank" in params:
        assert params["spatial_bank"].shape == (h, w, N)
        assert params["spatial_route"]["conv_1"]["kernel"].shape == (3, 3, C // 2, N * c1)
    out = jax.jit(model.apply)(variables, f_in)
    assert out.shape == f_in.shape and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()


def test_deformable_routing_reduces_to_plain_convs_at_zero_offsets_and_full_masks():
    """With zero offsets and masks of 1 the DCNs are the plain 3x3 convs: the wiring is the same."""
    f_in = _input(5, 6, seed=4)
    dcn = FSE(num_filters=N, mode="spatial", deformable=True)
    variables = _random_variables(dcn, f_in, seed=4)
    route = variables["params"]["spatial_route"]
    assert set(route) == {"dcn_0", "dcn_1"}
    assert set(route["dcn_0"]) == {"offset_conv", "mask_conv", "kernel", "bias"}
    out_dcn = dcn.apply(variables, f_in)

    def pin(layer):
        layer = dict(layer)
        layer["offset_conv"] = jax.tree_util.tree_map(jnp.zeros_like, layer["offset_conv"])
        layer["mask_conv"] = {
            "kernel": jnp.zeros_like(layer["mask_conv"]["kernel"]),
            "bias": jnp.full_like(layer["mask_conv"]["bias"], 40.0),  # sigmoid(40) == 1 in float32
        }
        return layer

    params = dict(variables["params"])
    params["spatial_route"] = {name: pin(route[name]) for name in ("dcn_0", "dcn_1")}
    plain_params = dict(params)
    plain_params["spatial_route"] = {
        f"conv_{i}": {"kernel": route[f"dcn_{i}"]["kernel"], "bias": route[f"dcn_{i}"]["bias"]} for i in (0, 1)
    }
    pinned = dcn.apply({"params": params}, f_in)
    plain = FSE(num_filters=N, mode="spatial", deformable=False).apply({"params": plain_params}, f_in)
    np.testing.assert_allclose(pinned, plain, rtol=1e-5, atol=1e-6)
    # and other offsets and masks do make a difference
    assert np.abs(np.asarray(out_dcn) - np.asarray(plain)).max() > 1e-6


def test_gradients_are_finite_and_reach_every_parameter():
    f_in = _input(6, 6, seed=5)
    model = FSE(num_filters=N)  # defaults: gate, dynamic, deformable
    params = _random_variables(model, f_in, seed=5, scale=0.1)["params"]
    loss = lambda p, x: jnp.sum(model.apply({"params": p}, x) ** 2)
    g_params, g_in = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, f_in)
    leaves = jax.tree_util.tree_leaves_with_path(g_params)
    for path, g in leaves:
        assert np.isfinite(np.asarray(g)).all(), path
    assert np.isfinite(np.asarray(g_in)).all() and np.abs(np.asarray(g_in)).max() > 0
    for name in ("freq_bank", "spatial_bank", "proj_in", "proj_out", "gate", "freq_route", "spatial_route"):
        assert max(float(np.abs(np.asarray(g)).max()) for g in jax.tree_util.tree_leaves(g_params[name])) > 0, name


def test_bad_mode_and_a_new_input_size_are_refused():
    f_in = _input(6, 6)
    with pytest.raises(ValueError, match="mode"):
        FSE(mode="sum", deformable=False).init(jax.random.key(0), f_in)
    model = FSE(mode="freq", deformable=False)
    variables = _random_variables(model, f_in)
    with pytest.raises(ValueError, match="freq_bank"):
        model.apply(variables, _input(8, 8))
