"""MASF's SSCA cross-attention and the student's residual block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow_ad.nn.attention import CrossAttention, ResidualBlock, avg_pool_space


def _x(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _init(mod, *args):
    """Jitted init/apply: one compilation per shape instead of one per primitive (eager flax)."""
    return jax.jit(mod.init)(jax.random.PRNGKey(0), *args), jax.jit(mod.apply)


def _np_layer_norm(x, p, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _np_cross_attention(params, x, ctx, heads):
    """Multi-head attention written out in float64 with the module's parameters."""
    P = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    x, ctx = np.asarray(x, np.float64), np.asarray(ctx, np.float64)
    b, h, w, c = x.shape
    dense = lambda name, a: a @ P[name]["kernel"] + P[name]["bias"]
    xn = _np_layer_norm(x, P["norm_q"]).reshape(b, h * w, c)
    cn = _np_layer_norm(ctx, P["norm_kv"]).reshape(b, -1, ctx.shape[-1])
    q, k, v = dense("query", xn), dense("key", cn), dense("value", cn)
    dim = q.shape[-1]
    dh = dim // heads
    out = np.zeros_like(q)
    for i in range(b):
        for hd in range(heads):
            sl = slice(hd * dh, (hd + 1) * dh)
            s = q[i, :, sl] @ k[i, :, sl].T / np.sqrt(dh)
            a = np.exp(s - s.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            out[i, :, sl] = a @ v[i, :, sl]
    return x + dense("out", out).reshape(b, h, w, c)


def test_cross_attention_shapes_and_parameters():
    x, ctx = _x((2, 6, 5, 12), 0), _x((2, 6, 5, 10), 1)
    mod = CrossAttention(dim=8, heads=4)
    v, apply = _init(mod, x, ctx)
    assert jax.tree_util.tree_map(jnp.shape, v["params"]) == {
        "norm_q": {"scale": (12,), "bias": (12,)},
        "norm_kv": {"scale": (10,), "bias": (10,)},
        "query": {"kernel": (12, 8), "bias": (8,)},
        "key": {"kernel": (10, 8), "bias": (8,)},
        "value": {"kernel": (10, 8), "bias": (8,)},
        "out": {"kernel": (8, 12), "bias": (12,)},
    }
    assert apply(v, x, ctx).shape == x.shape
    # a key/value map of another size (pooled or not) is fine: queries keep x's positions
    assert apply(v, x, _x((2, 3, 7, 10), 2)).shape == x.shape
    with pytest.raises(ValueError):
        CrossAttention(dim=6, heads=4).init(jax.random.PRNGKey(0), x, ctx)


def test_cross_attention_equals_explicit_numpy_multi_head_attention():
    x, ctx = _x((2, 3, 4, 8), 3), _x((2, 3, 4, 6), 4)
    mod = CrossAttention(dim=12, heads=3)
    v, apply = _init(mod, x, ctx)
    # non-trivial norms and biases, so every parameter shows up in the comparison
    v = jax.tree_util.tree_map(lambda a: a + 0.1 * _x(a.shape, a.size), v)
    np.testing.assert_allclose(np.asarray(apply(v, x, ctx)), _np_cross_attention(v["params"], x, ctx, 3), atol=2e-5)


def test_kv_pool_equals_attention_on_explicitly_pooled_keys_and_values():
    x, ctx = _x((2, 4, 6, 8), 5), _x((2, 9, 7, 8), 6)  # 9x7: the trailing row and column are dropped
    pooled = CrossAttention(dim=8, heads=4, kv_pool=2)
    v, apply = _init(pooled, x, ctx)
    explicit = np.asarray(ctx)[:, :8, :6].reshape(2, 4, 2, 3, 2, 8).mean(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(avg_pool_space(ctx, 2)), explicit, rtol=1e-6, atol=1e-6)
    got = apply(v, x, ctx)
    want = jax.jit(CrossAttention(dim=8, heads=4, kv_pool=1).apply)(v, x, jnp.asarray(explicit))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_cross_attention_is_equivariant_to_query_permutations_and_invariant_to_key_permutations():
    x, ctx = _x((1, 4, 5, 8), 7), _x((1, 3, 6, 8), 8)
    mod = CrossAttention(dim=8, heads=2)
    v, apply = _init(mod, x, ctx)
    out = np.asarray(apply(v, x, ctx)).reshape(1, 20, 8)
    perm = np.random.default_rng(0).permutation(20)
    xp = jnp.asarray(np.asarray(x).reshape(1, 20, 8)[:, perm].reshape(1, 4, 5, 8))
    out_p = np.asarray(apply(v, xp, ctx)).reshape(1, 20, 8)
    np.testing.assert_allclose(out_p, out[:, perm], rtol=1e-5, atol=1e-5)
    kperm = np.random.default_rng(1).permutation(18)
    cp = jnp.asarray(np.asarray(ctx).reshape(1, 18, 8)[:, kperm].reshape(1, 3, 6, 8))
    np.testing.assert_allclose(np.asarray(apply(v, x, cp)).reshape(1, 20, 8), out, rtol=1e-5, atol=1e-5)


def test_constant_values_give_a_constant_attention_output():
    x = _x((2, 4, 4, 8), 9)
    ctx = jnp.broadcast_to(_x((2, 1, 1, 8), 10), (2, 5, 3, 8))  # constant over positions, not over the batch
    mod = CrossAttention(dim=8, heads=4)
    v, apply = _init(mod, x, ctx)
    delta = np.asarray(apply(v, x, ctx) - x)  # the attention branch alone
    np.testing.assert_allclose(delta, np.broadcast_to(delta[:, :1, :1], delta.shape), atol=1e-5)
    assert np.abs(delta[0, 0, 0] - delta[1, 0, 0]).max() > 1e-4


@pytest.mark.parametrize("pre_norm", [False, True])
def test_residual_block(pre_norm):
    x = _x((2, 5, 6, 4), 11)
    block = ResidualBlock(4, pre_norm=pre_norm)
    v, apply = _init(block, x)
    shapes = {"conv0": {"kernel": (3, 3, 4, 4), "bias": (4,)}, "conv1": {"kernel": (3, 3, 4, 4), "bias": (4,)}}
    if pre_norm:
        shapes["norm"] = {"scale": (4,), "bias": (4,)}
    assert jax.tree_util.tree_map(jnp.shape, v["params"]) == shapes
    y = apply(v, x)
    assert y.shape == x.shape and float(jnp.abs(y - x).max()) > 1e-3
    # a zero last conv makes the block the identity
    v0 = {"params": {**v["params"], "conv1": jax.tree_util.tree_map(jnp.zeros_like, v["params"]["conv1"])}}
    np.testing.assert_array_equal(np.asarray(apply(v0, x)), np.asarray(x))
    with pytest.raises(ValueError):
        block.init(jax.random.PRNGKey(0), _x((1, 3, 3, 5), 0))
