"""NF-BMR flow pieces: the seeded channel permutation, the GLOW block, Eq. 8."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxflow_ad.flows.coupling import ConvSubnet
from jaxflow_ad.flows.glow import ChannelPermutation, GlowBlock, nfbmr_nll, permutation
from jaxflow_ad.flows.reversible import chain_forward, chain_inverse
from tests.flows.flow_checks import check_invertible, flat, perturb_params


def _x(shape, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def test_permutation_is_pinned_exactly_invertible_and_seeded():
    # The order is recomputed from the seed, not stored: a NumPy drawing another order would break checkpoints.
    assert permutation(8, 0).tolist() == [2, 4, 3, 6, 5, 0, 1, 7]
    assert permutation(8, 1).tolist() != permutation(8, 0).tolist()
    x = _x((2, 3, 3, 8))
    layer = ChannelPermutation(8, seed=0)
    v = layer.init(jax.random.PRNGKey(0), x, method=layer.forward)
    assert v == {}  # a constant: no parameters, no state
    y, ld = layer.apply(v, x, method=layer.forward)
    np.testing.assert_array_equal(y, np.asarray(x)[..., [2, 4, 3, 6, 5, 0, 1, 7]])
    np.testing.assert_array_equal(ld, np.zeros(2))
    xr, ld_inv = layer.apply(v, y, method=layer.inverse)
    np.testing.assert_array_equal(xr, x)  # bit-exact
    np.testing.assert_array_equal(ld_inv, np.zeros(2))
    y1, _ = ChannelPermutation(8, seed=1).apply({}, x, method=layer.forward)
    assert not np.array_equal(y1, y)
    check_invertible(layer, v, x[:1])
    with pytest.raises(ValueError, match="channels=8"):
        layer.apply(v, x[..., :6], method=layer.forward)


@pytest.mark.parametrize("use_bias", [False, True])
def test_conv_subnet_activation_and_bias(use_bias):
    x = _x((2, 3, 3, 4))
    default = ConvSubnet(out_channels=6, hidden=5, ksize=1)
    v = default.init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_map(jnp.shape, v["params"]) == {
        "conv0": {"kernel": (1, 1, 4, 5)},
        "conv1": {"kernel": (1, 1, 5, 6)},
    }
    net = ConvSubnet(out_channels=6, hidden=5, ksize=1, activation=nn.relu, use_bias=use_bias)
    v = perturb_params(net.init(jax.random.PRNGKey(0), x), jax.random.PRNGKey(1))
    p = jax.tree_util.tree_map(np.asarray, v["params"])
    b0, b1 = (p["bias0"], p["bias1"]) if use_bias else (0.0, 0.0)
    pre = np.asarray(x) @ p["conv0"]["kernel"][0, 0] + b0
    leaky = ConvSubnet(out_channels=6, hidden=5, ksize=1, use_bias=use_bias)  # the default activation
    for module, act in [(net, np.maximum(pre, 0.0)), (leaky, np.where(pre > 0, pre, 0.01 * pre))]:
        np.testing.assert_allclose(module.apply(v, x), act @ p["conv1"]["kernel"][0, 0] + b1, rtol=1e-5, atol=1e-5)
    assert (pre < 0).any()  # the two activations were told apart


@pytest.mark.parametrize("channels,use_bias", [pytest.param(6, True, marks=pytest.mark.slow), (5, False)])
def test_glow_block_is_invertible(channels, use_bias):
    x = _x((1, 3, 3, channels), 1)
    layer = GlowBlock(channels, hidden=8, ksize=3, seed=3, use_bias=use_bias)
    v = perturb_params(layer.init(jax.random.PRNGKey(0), x, method=layer.forward), jax.random.PRNGKey(2))
    assert set(v) == {"params"} and set(v["params"]) == {"coupling1", "coupling2"}
    _, ld = check_invertible(layer, v, x)
    assert abs(float(ld[0])) > 0.1  # the scales are not trivial
    # conditional: the condition reaches both subnets, the map stays invertible
    cond = _x((1, 2), 3)
    v = perturb_params(layer.init(jax.random.PRNGKey(0), x, cond, method=layer.forward), jax.random.PRNGKey(2))
    check_invertible(layer, v, x, cond=cond)


def test_fresh_glow_block_is_the_permutation():
    x = _x((2, 4, 4, 6))
    layer = GlowBlock(6, hidden=8, seed=5)
    v = layer.init(jax.random.PRNGKey(0), x, method=layer.forward)
    y, ld = layer.apply(v, x, method=layer.forward)
    np.testing.assert_array_equal(y, np.asarray(x)[..., permutation(6, 5)])
    np.testing.assert_array_equal(ld, np.zeros(2))


def test_glow_order_by_hand():
    """z2 = exp(s1(y1)) y2 + b1(y1), z1 = exp(s2(z2)) y1 + b2(z2) after the permutation, recomputed in NumPy."""
    c, hidden, clamp = 5, 8, 1.9
    x = _x((2, 3, 3, c), 4)
    layer = GlowBlock(c, hidden=hidden, ksize=3, clamp=clamp, seed=2)
    v = perturb_params(layer.init(jax.random.PRNGKey(0), x, method=layer.forward), jax.random.PRNGKey(5), 0.5)
    z, ld = layer.apply(v, x, method=layer.forward)

    def subnet(name, h, n):  # the raw subnet outputs, from the block's own parameters
        net = ConvSubnet(2 * n, hidden=hidden, ksize=3, activation=nn.relu, use_bias=True)
        o = np.asarray(net.apply({"params": v["params"][name]["net"]}, jnp.asarray(h)), np.float64)
        s_raw, b = o[..., :n], o[..., n:]
        return clamp * 0.636 * np.arctan(s_raw / clamp), b

    xp = np.asarray(x, np.float64)[..., permutation(c, 2)]
    y1, y2 = xp[..., : c // 2], xp[..., c // 2 :]
    s1, b1 = subnet("coupling1", y1, c - c // 2)
    z2 = np.exp(s1) * y2 + b1
    s2, b2 = subnet("coupling2", z2.astype(np.float32), c // 2)
    z1 = np.exp(s2) * y1 + b2
    np.testing.assert_allclose(z, np.concatenate([z1, z2], -1), rtol=1e-5, atol=1e-5)
    ref_ld = s1.reshape(2, -1).sum(1) + s2.reshape(2, -1).sum(1)
    np.testing.assert_allclose(ld, ref_ld, rtol=1e-5, atol=1e-4)
    assert np.abs(s1).max() > 0.1 and np.abs(s2).max() > 0.1 and np.abs(s1).max() < clamp * 0.636 * np.pi / 2


@pytest.mark.slow  # ~10 s cold; NF-BMR's four-block flow is trained and scored in the default run
def test_chain_of_four_glow_blocks():
    x = _x((1, 2, 2, 4), 6)
    layers = [GlowBlock(4, hidden=8, seed=i) for i in range(4)]
    variables = [
        perturb_params(l.init(jax.random.PRNGKey(i), x, method=l.forward), jax.random.PRNGKey(10 + i))
        for i, l in enumerate(layers)
    ]
    y, ld, _ = chain_forward(layers, variables, x)
    xr, ld_inv = chain_inverse(layers, variables, y)
    np.testing.assert_allclose(xr, x, atol=1e-5)
    np.testing.assert_allclose(ld, -ld_inv, rtol=1e-5, atol=1e-4)

    def f(v):
        return flat([chain_forward(layers, variables, v.reshape(x.shape))[0]])

    sign, logabs = jnp.linalg.slogdet(jax.jacfwd(f)(x.reshape(-1)))
    assert float(sign) != 0 and abs(float(ld[0])) > 0.1
    np.testing.assert_allclose(logabs, ld[0], rtol=1e-4, atol=1e-3)

    # memory-saving backprop through GLOW blocks: same loss gradient as autodiff
    def loss(params, rev):
        vs = [dict(v, params=p) for v, p in zip(variables, params)]
        z, ld, _ = chain_forward(layers, vs, x, train=True, reversible=rev)
        return nfbmr_nll(z, ld)

    params = [v["params"] for v in variables]
    g0 = jax.grad(functools.partial(loss, rev=False))(params)
    g1 = jax.grad(functools.partial(loss, rev=True))(params)
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("divide", [True, False])
def test_nfbmr_nll_matches_numpy(divide):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    logdet = rng.normal(size=(3,)).astype(np.float32) * 10
    per_sample = 0.5 * (z.astype(np.float64) ** 2).sum(axis=(1, 2, 3)) - logdet
    ref = np.mean(per_sample / (4 * 5 * 6) if divide else per_sample)
    np.testing.assert_allclose(nfbmr_nll(jnp.asarray(z), jnp.asarray(logdet), divide=divide), ref, rtol=1e-5)
    if divide:  # a standard-normal latent with no volume change costs about 1/2 per dimension
        assert abs(float(nfbmr_nll(jnp.asarray(z), jnp.zeros(3))) - 0.5) < 0.1
