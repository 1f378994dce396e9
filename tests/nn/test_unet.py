"""FAIR's UNet: shapes, parameter count, BatchNorm statistics, align-corners upsampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow_ad.nn.unet import UNet, upsample_bilinear_align_corners


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def test_output_shape_and_batchnorm_updates():
    net = UNet(base_width=4, out_channels=3)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
    variables = jax.jit(net.init)(jax.random.key(1), x)
    assert set(variables) == {"params", "batch_stats"}
    y_eval = jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, x)
    assert y_eval.shape == (2, 32, 32, 3) and y_eval.dtype == jnp.float32
    y_train, new_state = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert y_train.shape == (2, 32, 32, 3)
    old = jax.tree_util.tree_leaves(variables["batch_stats"])
    new = jax.tree_util.tree_leaves(new_state["batch_stats"])
    assert len(old) == len(new) > 0
    assert all(not np.allclose(a, b) for a, b in zip(old, new))  # every mean/var moved
    # eval mode uses the running statistics, so outputs differ from train mode
    assert not np.allclose(np.asarray(y_eval), np.asarray(y_train))
    with pytest.raises(ValueError, match="divisible by 16"):
        net.init(jax.random.key(0), jnp.zeros((1, 24, 24, 1)))


def _official_param_count(c, cin=1, cout=3):
    conv = lambda i, o: 9 * i * o + o  # noqa: E731
    cbr = lambda i, o: conv(i, o) + 2 * o  # noqa: E731
    w = [c, 2 * c, 4 * c, 8 * c, 8 * c]
    n, prev = 0, cin
    for wi in w:
        n += cbr(prev, wi) + cbr(wi, wi)
        prev = wi
    for lvl in (3, 2, 1, 0):
        n += cbr(prev, w[lvl]) + cbr(w[lvl], w[lvl]) + cbr(w[lvl], w[max(lvl - 1, 0)])
        prev = w[max(lvl - 1, 0)]
    return n + conv(prev, cout)


def test_parameter_count_matches_official_architecture():
    shapes = jax.eval_shape(lambda: UNet(base_width=128).init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))))
    n = _count(shapes["params"])
    assert n == _official_param_count(128)
    assert 68.5e6 < n < 69.5e6  # "about 69.0M" (65.8 in 2^20 units)
    small = jax.eval_shape(lambda: UNet(base_width=32).init(jax.random.key(0), jnp.zeros((1, 32, 32, 2))))
    assert _count(small["params"]) == _official_param_count(32, cin=2)


def test_upsample_align_corners():
    x = jnp.arange(3.0).reshape(1, 3, 1, 1)
    y = np.asarray(upsample_bilinear_align_corners(jnp.tile(x, (1, 1, 3, 1))))[0, :, 0, 0]
    np.testing.assert_allclose(y, np.linspace(0, 2, 6), atol=1e-6)  # corners aligned, linear between
