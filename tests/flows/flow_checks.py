"""Checks shared by the flow tests: every invertible layer goes through :func:`check_invertible`."""

import jax
import jax.numpy as jnp
import numpy as np


def perturb_params(variables, key, scale=0.2):
    """Add `scale` * N(0, 1) to every parameter (so zero-initialised scales are non-trivial) and non-zero
    volume-norm running means."""
    params = variables["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [l + scale * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)]
    )
    out = dict(variables, params=params)
    if "volume_norm" in variables:  # non-zero running means so evaluation mode is not trivial
        out["volume_norm"] = jax.tree_util.tree_map(
            lambda l: 0.1 * jax.random.normal(key, l.shape, l.dtype), variables["volume_norm"]
        )
    return out


def flat(levels):
    return jnp.concatenate([l.reshape(-1) for l in levels])


def unflat(v, shapes):
    out, i = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(v[i : i + n].reshape(s))
        i += n
    return tuple(out)


def check_invertible(layer, variables, x, shapes=None, jac=True, train=False, atol=1e-5, cond=None):
    """Round trip, `logdet_forward == -logdet_inverse` and (`jac`) logdet == slogdet of the autodiff Jacobian
    of the first sample. Returns the forward `(y, logdet)`."""
    y, ld = layer.apply(variables, x, cond, train=train, method=layer.forward)
    xr, ld_inv = layer.apply(variables, y, cond, train=train, method=layer.inverse)
    for a, b in zip(jax.tree_util.tree_leaves(xr), jax.tree_util.tree_leaves(x)):
        np.testing.assert_allclose(a, b, atol=atol)
    np.testing.assert_allclose(ld, -ld_inv, rtol=1e-5, atol=1e-4)
    if jac:  # single sample, eval mode: the transform is a function of that sample alone
        shapes = shapes or [l.shape for l in jax.tree_util.tree_leaves(x)]
        treedef = jax.tree_util.tree_structure(x)

        def f(v):
            xs = jax.tree_util.tree_unflatten(treedef, list(unflat(v, shapes)))
            out, _ = layer.apply(variables, xs, cond, train=train, method=layer.forward)
            return flat(jax.tree_util.tree_leaves(out))

        v0 = flat(jax.tree_util.tree_leaves(x))
        sign, logabs = jnp.linalg.slogdet(jax.jacfwd(f)(v0))
        assert float(sign) != 0
        np.testing.assert_allclose(logabs, ld[0], rtol=1e-4, atol=1e-3)
    return y, ld
