"""Property tests of every invertible layer: round trip, logdet symmetry, logdet == slogdet(jacfwd)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxflow_ad.flows import pyramid as pyr
from jaxflow_ad.flows.coupling import ChannelAffineCoupling, soft_clamp
from jaxflow_ad.flows.lu_conv import InvConv1x1LU
from jaxflow_ad.flows.pyramid_coupling import PyramidCoupling, pyramid_schedule
from jaxflow_ad.flows.reversible import chain_forward, chain_inverse
from jaxflow_ad.flows.volume_norm import VolumeNorm
from tests.flows.flow_checks import check_invertible, perturb_params

# ---------------------------------------------------------------- pyramid


@pytest.mark.parametrize("down,up", [("max", "nearest"), ("subsample", "zeros"), ("avg", "nearest")])
@pytest.mark.parametrize("levels,size", [(1, 8), (3, 16), (4, 24)])
def test_pyramid_round_trip(down, up, levels, size):
    x = jax.random.normal(jax.random.PRNGKey(levels), (2, size, size, 3))
    pyramid = pyr.decompose(x, levels, down, up)
    assert [p.shape[1] for p in pyramid] == [size // 2**i for i in range(levels)]
    np.testing.assert_allclose(pyr.compose(pyramid, up), x, atol=2e-6)


def test_pyramid_operators_match_definitions():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 2))
    k1 = np.array([1, 4, 6, 4, 1], np.float32)
    k2 = np.outer(k1, k1) / 256
    xp = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
    ref = np.zeros_like(np.asarray(x))
    for i in range(8):
        for j in range(8):
            ref[0, i, j] = np.einsum("uv,uvc->c", k2, xp[0, i : i + 5, j : j + 5])
    np.testing.assert_allclose(pyr.binomial_blur(x), ref, atol=1e-6)
    down = pyr.pyramid_down(x, "max")
    np.testing.assert_allclose(down, ref.reshape(1, 4, 2, 4, 2, 2).max(axis=(2, 4)), atol=1e-6)
    up = pyr.nearest_up2(x)
    assert up.shape == (1, 16, 16, 2) and float(up[0, 3, 5, 1]) == float(x[0, 1, 2, 1])
    assert float(pyr.nearest_down2(x)[0, 1, 2, 0]) == float(x[0, 2, 4, 0])


def test_pyramid_rejects_indivisible_size():
    with pytest.raises(ValueError, match="multiples of 2\\*\\*\\(levels-1\\) = 8"):
        pyr.decompose(jnp.zeros((1, 20, 20, 3)), 4)


# ---------------------------------------------------------------- layers


def test_soft_clamp_bounds_and_slope():
    s = jnp.linspace(-1e4, 1e4, 101)
    assert float(jnp.max(jnp.abs(soft_clamp(s)))) < 2 * 0.636 * np.pi / 2 + 1e-6
    np.testing.assert_allclose(jax.grad(soft_clamp)(0.0), 0.636, rtol=1e-6)


@pytest.mark.parametrize("mode", ["CVN", "SVN"])
def test_volume_norm_train_and_eval(mode):
    s = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 5, 6)) + 2.0
    vn = VolumeNorm(mode)
    v = vn.init(jax.random.PRNGKey(0), s, train=True)
    assert float(jnp.abs(v["volume_norm"]["running_mean"]).max()) == 0.0
    out, upd = vn.apply(v, s, train=True, mutable=["volume_norm"])
    axes = (0, 3) if mode == "CVN" else (0, 1, 2)
    np.testing.assert_allclose(jnp.mean(out, axis=axes), 0.0, atol=1e-5)
    np.testing.assert_allclose(upd["volume_norm"]["running_mean"], 0.1 * jnp.mean(s, axes, keepdims=True), rtol=1e-5)
    ev = vn.apply(upd, s, train=False)
    np.testing.assert_allclose(ev, s - upd["volume_norm"]["running_mean"], rtol=1e-6)
    # Not mutable (e.g. inside the reversible backward): no update, no error.
    out2 = vn.apply(upd, s, train=True)
    np.testing.assert_allclose(out2, out, rtol=1e-6)


@pytest.mark.parametrize("vn", [True, False])
def test_lu_conv(vn):
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 3, 3, 4))
    layer = InvConv1x1LU(volume_norm=vn)
    v = layer.init(jax.random.PRNGKey(0), x, method=layer.forward)
    v = perturb_params(v, jax.random.PRNGKey(5))
    _, ld = check_invertible(layer, v, x)
    if vn:
        np.testing.assert_allclose(ld, 0.0, atol=1e-5)  # volume normalised: |det A| = 1
    else:
        assert abs(float(ld[0])) > 1e-3


@pytest.mark.parametrize("mode", ["CVN", "SVN", "none"])
@pytest.mark.parametrize("flip", [False, True])
def test_channel_coupling(mode, flip):
    x = jax.random.normal(jax.random.PRNGKey(3), (1, 3, 3, 5))
    layer = ChannelAffineCoupling(channels=5, hidden=4, ksize=3, volume_norm=mode, flip=flip)
    v = layer.init(jax.random.PRNGKey(0), x, method=layer.forward)
    v = perturb_params(v, jax.random.PRNGKey(6))
    check_invertible(layer, v, x)


def test_fresh_coupling_is_identity():
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 4, 4))
    layer = ChannelAffineCoupling(channels=4, hidden=4)
    v = layer.init(jax.random.PRNGKey(0), x, method=layer.forward)
    y, ld = layer.apply(v, x, method=layer.forward)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(ld, 0.0)


class MLPSubnet(nn.Module):
    """A subnet of another family (per-pixel MLP), to prove the coupling takes any factory."""

    out_channels: int

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.gelu(nn.Dense(6)(x))
        return nn.Dense(self.out_channels, kernel_init=nn.initializers.zeros)(h)


@pytest.mark.parametrize("cond_kind", ["vector", "map"])
@pytest.mark.parametrize("subnet", ["conv", "mlp"])
def test_conditional_coupling_with_a_subnet_factory(cond_kind, subnet):
    x = jax.random.normal(jax.random.PRNGKey(3), (1, 3, 3, 4))
    shape = (1, 3) if cond_kind == "vector" else (1, 3, 3, 2)
    cond = jax.random.normal(jax.random.PRNGKey(4), shape)
    factory = None if subnet == "conv" else MLPSubnet
    layer = ChannelAffineCoupling(channels=4, subnet=factory, hidden=4, volume_norm="CVN")
    v = layer.init(jax.random.PRNGKey(0), x, cond, method=layer.forward)
    y0, ld0 = layer.apply(v, x, cond, method=layer.forward)
    np.testing.assert_array_equal(y0, x)  # zero-initialised last layer: the identity
    np.testing.assert_array_equal(ld0, 0.0)
    v = perturb_params(v, jax.random.PRNGKey(6))
    y, _ = check_invertible(layer, v, x, cond=cond)
    y2, _ = layer.apply(v, x, cond + 1.0, method=layer.forward)
    assert float(jnp.abs(y2 - y).max()) > 1e-3  # the condition reaches the subnet
    np.testing.assert_array_equal(y2[..., :2], x[..., :2])  # and only the transformed half moves
    with pytest.raises(ValueError, match="condition"):
        layer.apply(v, x, jnp.zeros((1, 2, 2, 2)), method=layer.forward)


def test_pyramid_coupling_rejects_a_condition():
    x = _levels(jax.random.PRNGKey(4), 1, 4, 2, 2)
    layer = PyramidCoupling("up", 0, channels=2, ksize=3)
    v = layer.init(jax.random.PRNGKey(0), x, method=layer.forward)
    with pytest.raises(ValueError, match="no condition"):
        layer.apply(v, x, jnp.zeros((1, 3)), method=layer.forward)


def _levels(key, batch, size, levels, c):
    return tuple(
        jax.random.normal(k, (batch, size // 2**i, size // 2**i, c))
        for i, k in enumerate(jax.random.split(key, levels))
    )


@pytest.mark.parametrize("kind,start,levels", [("up", 0, 2), ("down", 0, 2), ("down", 1, 3), ("dual", 0, 3)])
@pytest.mark.parametrize("mode", ["CVN", "SVN"])
def test_pyramid_blocks(kind, start, levels, mode):
    x = _levels(jax.random.PRNGKey(4), 1, 8 if levels == 3 else 4, levels, 2)
    layer = PyramidCoupling(kind, start, channels=2, ksize=3, volume_norm=mode)
    v = layer.init(jax.random.PRNGKey(0), x, method=layer.forward)
    v = perturb_params(v, jax.random.PRNGKey(7))
    y, _ = check_invertible(layer, v, x)
    changed = [i for i in range(levels) if not np.allclose(y[i], x[i])]
    assert changed == [layer.target]
    # train-mode round trip on a batch (batch statistics are recomputed in the inverse)
    xb = _levels(jax.random.PRNGKey(9), 3, 8 if levels == 3 else 4, levels, 2)
    check_invertible(layer, v, xb, jac=False, train=True)


def test_fast_down_block_equals_full_resolution_subnet():
    """CVN 'down' block: the stride-2 last conv gives the official full-resolution result.

    Its running mean lives on the coarse grid: the official (fine-grid) one at even pixels.
    """
    x = _levels(jax.random.PRNGKey(4), 2, 8, 2, 3)
    fast = PyramidCoupling("down", 0, channels=3, ksize=3, volume_norm="CVN", fast_down=True)
    full = PyramidCoupling("down", 0, channels=3, ksize=3, volume_norm="CVN", fast_down=False)
    va = perturb_params(fast.init(jax.random.PRNGKey(0), x, method=fast.forward), jax.random.PRNGKey(1))
    va["volume_norm"] = jax.tree_util.tree_map(jnp.zeros_like, va["volume_norm"])
    vb = dict(full.init(jax.random.PRNGKey(0), x, method=full.forward), params=va["params"], constants=va["constants"])
    for train in (True, False):
        (ya, la), ua = fast.apply(va, x, train=train, method=fast.forward, mutable=["volume_norm"])
        (yb, lb), ub = full.apply(vb, x, train=train, method=full.forward, mutable=["volume_norm"])
        va, vb = dict(va, **ua), dict(vb, **ub)
        np.testing.assert_allclose(ya[1], yb[1], atol=1e-5)
        np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-4)
        rm_a = va["volume_norm"]["affine"]["norm"]["running_mean"]
        rm_b = vb["volume_norm"]["affine"]["norm"]["running_mean"]
        assert rm_a.shape == (1, 4, 4, 1) and rm_b.shape == (1, 8, 8, 1)
        np.testing.assert_allclose(rm_a, rm_b[:, ::2, ::2], atol=1e-6)
        assert float(jnp.abs(rm_a).max()) > 0


@pytest.mark.parametrize(
    "levels,expected",
    [
        (2, [("down", 0), ("up", 0)]),
        (4, [("dual", 0), ("down", 2), ("up", 0), ("dual", 1)]),
        (8, [("dual", 0), ("dual", 2), ("dual", 4), ("down", 6), ("up", 0), ("dual", 1), ("dual", 3), ("dual", 5)]),
    ],
)
def test_official_schedule(levels, expected):
    assert pyramid_schedule(levels, 1) == expected
    assert pyramid_schedule(levels, 3) == expected * 3
    for stack in [pyramid_schedule(levels, 1)]:  # every level transformed exactly once per stack
        targets = sorted(s if k == "up" else s + 1 for k, s in stack)
        assert targets == list(range(levels))


# ---------------------------------------------------------------- chains and reversible backprop


def _coupling_chain(depth, c=4):
    return [
        ChannelAffineCoupling(channels=c, hidden=8, ksize=3, volume_norm="CVN", flip=bool(i % 2)) for i in range(depth)
    ]


@pytest.mark.parametrize("period", [None, 2])
def test_chain_round_trip_and_reversible_gradients(period):
    """Reversible gradients equal autodiff, unrolled and as a scan over repetitions."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 4))
    layers = _coupling_chain(6)
    variables = [
        perturb_params(l.init(jax.random.PRNGKey(i), x, method=l.forward), jax.random.PRNGKey(10 + i), 0.05)
        for i, l in enumerate(layers)
    ]
    y, ld, _ = chain_forward(layers, variables, x, train=False)
    xr, ld_inv = chain_inverse(layers, variables, y, train=False)
    np.testing.assert_allclose(xr, x, atol=1e-5)
    np.testing.assert_allclose(ld, -ld_inv, rtol=1e-5, atol=1e-4)

    def loss(params, rev):
        vs = [dict(v, params=p) for v, p in zip(variables, params)]
        y, ld, new = chain_forward(layers, vs, x, train=True, reversible=rev, period=period if rev else None)
        return jnp.mean(y**2) - 1e-3 * jnp.mean(ld), new

    params = [v["params"] for v in variables]
    (l0, n0), g0 = jax.value_and_grad(functools.partial(loss, rev=False), has_aux=True)(params)
    (l1, n1), g1 = jax.value_and_grad(functools.partial(loss, rev=True), has_aux=True)(params)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    flat0, flat1 = jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)
    num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(flat0, flat1)) ** 0.5
    den = sum(float(jnp.sum(a**2)) for a in flat0) ** 0.5
    assert den > 0 and num / den <= 1e-5
    # running means updated once, identically on both paths
    for a, b in zip(
        jax.tree_util.tree_leaves([v["volume_norm"] for v in n0]),
        jax.tree_util.tree_leaves([v["volume_norm"] for v in n1]),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_reversible_period_must_divide_a_repeating_chain():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 4, 4))
    layers = _coupling_chain(6)  # flip alternates: period 2, not 3 or 4
    variables = [l.init(jax.random.PRNGKey(i), x, method=l.forward) for i, l in enumerate(layers)]
    for bad in (3, 4):
        with pytest.raises(ValueError, match="repetition"):
            chain_forward(layers, variables, x, train=True, reversible=True, period=bad)


@pytest.mark.parametrize("period", [None, 2])
def test_reversible_chain_passes_the_condition_and_its_gradient(period):
    """A conditional chain: reversible gradients for the parameters and the condition equal autodiff."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 4))
    cond = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
    layers = _coupling_chain(4)
    variables = [
        perturb_params(l.init(jax.random.PRNGKey(i), x, cond, method=l.forward), jax.random.PRNGKey(20 + i), 0.05)
        for i, l in enumerate(layers)
    ]
    y, ld, _ = chain_forward(layers, variables, x, cond)
    xr, ld_inv = chain_inverse(layers, variables, y, cond)
    np.testing.assert_allclose(xr, x, atol=1e-5)
    np.testing.assert_allclose(ld, -ld_inv, rtol=1e-5, atol=1e-4)
    y_other, _, _ = chain_forward(layers, variables, x, cond * 2.0)
    assert float(jnp.abs(y_other - y).max()) > 1e-3

    def loss(params, c, rev):
        vs = [dict(v, params=p) for v, p in zip(variables, params)]
        y, ld, _ = chain_forward(layers, vs, x, c, train=True, reversible=rev, period=period if rev else None)
        return jnp.mean(y**2) - 1e-3 * jnp.mean(ld)

    params = [v["params"] for v in variables]
    g0 = jax.grad(functools.partial(loss, rev=False), argnums=(0, 1))(params, cond)
    g1 = jax.grad(functools.partial(loss, rev=True), argnums=(0, 1))(params, cond)
    assert float(jnp.abs(g0[1]).max()) > 1e-4
    np.testing.assert_allclose(g1[1], g0[1], rtol=1e-4, atol=1e-7)
    for a, b in zip(jax.tree_util.tree_leaves(g0[0]), jax.tree_util.tree_leaves(g1[0])):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
