"""Invertible 1x1 convolution in PLU form (Glow; PyramidFlow Eq. 6-7).

``A = P L (U + diag(sign * exp(s)))`` with ``P`` a frozen permutation, ``L``
unit lower triangular, ``U`` strictly upper triangular, and ``log|det A| =
sum_i s_i`` per pixel (Eq. 7). With volume normalization (Sec. 3.2) ``s`` is
replaced by ``s - mean(s)`` so that ``|det A| = 1``.

Initialisation as the official ``InvConv2dLU``: ``P, L, U = lu(qr(randn))``
and ``s = log|diag U|``. ``w_l`` and ``w_u`` are stored as full ``C x C``
matrices and masked in use (so converted official weights load unchanged).
The official inverse inverts ``A`` in float64; here the inverse is built from
the triangular factors, ``A^-1 = U'^-1 L^-1 P^T``, which is as accurate in
float32 and needs no x64 mode. The official code crashes with volume
normalization off (``w_s`` undefined); here ``volume_norm=False`` works.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.linalg import lu as _lu
from jax.scipy.linalg import solve_triangular


def plu_init(key: jax.Array, channels: int):
    """Random rotation factored as ``P @ L @ U``; returns ``(P, L, U)`` float32."""
    q, _ = jnp.linalg.qr(jax.random.normal(key, (channels, channels), jnp.float32))
    return _lu(q)


def plu_weight(perm, sign, w_l, w_u, w_s, volume_norm: bool = True):
    """The ``C_out x C_in`` matrix ``A`` of Eq. 6 and its log-diagonal ``s``."""
    c = w_s.shape[0]
    s = w_s - jnp.mean(w_s) if volume_norm else w_s
    lower = jnp.tril(w_l, -1) + jnp.eye(c, dtype=w_l.dtype)
    upper = jnp.triu(w_u, 1) + jnp.diag(sign * jnp.exp(s))
    return perm @ lower @ upper, s


def plu_inverse_weight(perm, sign, w_l, w_u, w_s, volume_norm: bool = True):
    """``A^-1`` from the triangular factors (no general matrix inverse)."""
    c = w_s.shape[0]
    s = w_s - jnp.mean(w_s) if volume_norm else w_s
    eye = jnp.eye(c, dtype=w_l.dtype)
    lower = jnp.tril(w_l, -1) + eye
    upper = jnp.triu(w_u, 1) + jnp.diag(sign * jnp.exp(s))
    l_inv = solve_triangular(lower, eye, lower=True, unit_diagonal=True)
    u_inv = solve_triangular(upper, eye, lower=False)
    return u_inv @ l_inv @ perm.T


def apply_1x1(x: jax.Array, weight: jax.Array) -> jax.Array:
    """1x1 convolution of NHWC ``x`` with a ``C_out x C_in`` matrix."""
    return jnp.einsum("bhwi,oi->bhwo", x, weight)


class InvConv1x1LU(nn.Module):
    """PLU-parameterised invertible 1x1 convolution with optional volume normalization."""

    volume_norm: bool = True

    def _variables(self, channels: int):
        # One random rotation feeds P, L, U and the signs. Outside init, flax may still
        # evaluate the init functions abstractly (shape checks): a fixed key serves then.
        key = self.make_rng("params") if self.is_initializing() else jax.random.PRNGKey(0)
        factors = lambda: plu_init(key, channels)
        perm = self.variable("constants", "perm", lambda: factors()[0])
        sign = self.variable("constants", "sign", lambda: jnp.sign(jnp.diag(factors()[2])))
        w_l = self.param("w_l", lambda _: factors()[1])
        w_u = self.param("w_u", lambda _: jnp.triu(factors()[2], 1))
        w_s = self.param("w_s", lambda _: jnp.log(jnp.abs(jnp.diag(factors()[2]))))
        return perm.value, sign.value, w_l, w_u, w_s

    @nn.compact
    def __call__(self, x: jax.Array, inverse: bool = False):
        """Returns ``(y, logdet)`` with logdet per sample ``[B]``."""
        factors = self._variables(x.shape[-1])
        weight, s = plu_weight(*factors, volume_norm=self.volume_norm)
        logdet = x.shape[1] * x.shape[2] * jnp.sum(s) * jnp.ones((x.shape[0],), x.dtype)
        if not inverse:
            return apply_1x1(x, weight), logdet
        return apply_1x1(x, plu_inverse_weight(*factors, volume_norm=self.volume_norm)), -logdet

    def forward(self, x, cond=None, *, train: bool = False):
        del cond, train  # unconditional, no batch statistics: a condition passed down a chain is ignored
        return self(x, inverse=False)

    def inverse(self, y, cond=None, *, train: bool = False):
        del cond, train
        return self(y, inverse=True)
