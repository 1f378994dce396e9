"""MASF's spectral-spatial cross-attention (SSCA, paper Sec. 3.4) and the student's residual block.

SSCA fuses the two masked views of ``F_spec``: queries from the spatially
masked view, keys and values from the frequency-masked view, 4 heads
("Q = F_smask, K = V = F_fmask"); "the output goes through two Residual Blocks
and a linear projection". The paper gives nothing more; the form here is the
standard pre-norm transformer cross-attention (Vaswani et al., NeurIPS 2017,
Sec. 3.2; pre-LayerNorm as in Xiong et al., ICML 2020)::

    y = x + W_o MHA(W_q LN_q(x), W_k LN_kv(pool(c)), W_v LN_kv(pool(c)))

over all spatial positions of NHWC maps, where ``pool`` optionally averages
``kv_pool x kv_pool`` windows of the key/value map first (a choice, for memory:
layer 1 at 64x64 has 4096 positions, and ``kv_pool=2`` cuts the ``[4096, 4096]``
score matrix per head to ``[4096, 1024]``).

* :func:`avg_pool_space`, :func:`multi_head_attention`: the pure parts.
* :class:`CrossAttention`: the linen module (parameters ``norm_q``, ``norm_kv``,
  ``query``, ``key``, ``value``, ``out``).
* :class:`ResidualBlock`: ``x + conv3x3(GELU(conv3x3(x)))`` (a choice, below).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflow_ad.flows.coupling import torch_default_bias_init, torch_default_kernel_init


def avg_pool_space(x: jax.Array, pool: int) -> jax.Array:
    """Average non-overlapping ``pool x pool`` windows of NHWC ``x``: ``[B, H // pool, W // pool, C]``.

    Trailing rows/columns that do not fill a window are dropped (PyTorch's
    ``avg_pool2d`` default, ``ceil_mode=False``). ``pool=1`` returns ``x``.
    """
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    if pool == 1:
        return x
    b, h, w, c = x.shape
    h2, w2 = h // pool, w // pool
    if h2 == 0 or w2 == 0:
        raise ValueError(f"a {pool}x{pool} pool does not fit a {h}x{w} map")
    x = x[:, : h2 * pool, : w2 * pool]
    return x.reshape(b, h2, pool, w2, pool, c).mean(axis=(2, 4))


def multi_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int) -> jax.Array:
    """Multi-head scaled dot-product attention (Vaswani et al. 2017, Eq. 1) on projected inputs.

    ``q [B, Nq, D]``, ``k, v [B, Nk, D]`` are split into ``heads`` chunks of
    ``D / heads`` channels (head ``h`` takes channels ``h*dh : (h+1)*dh``, as
    PyTorch's ``nn.MultiheadAttention``); per head
    ``softmax(q k^T / sqrt(dh)) v`` over the ``Nk`` keys, in float32; the heads
    are concatenated back to ``[B, Nq, D]``. No masking, no dropout.
    """
    b, nq, d = q.shape
    nk = k.shape[1]
    if d % heads:
        raise ValueError(f"{d} channels do not split into {heads} heads")
    dh = d // heads
    qh = q.astype(jnp.float32).reshape(b, nq, heads, dh)
    kh = k.astype(jnp.float32).reshape(b, nk, heads, dh)
    vh = v.astype(jnp.float32).reshape(b, nk, heads, dh)
    scores = jnp.einsum("bqhd,bkhd->bhqk", qh, kh) / math.sqrt(dh)
    attn = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", attn, vh).reshape(b, nq, d)


class CrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention between NHWC maps, with a residual on the query input.

    ``__call__(x [B, H, W, C], context [B, H', W', C']) -> [B, H, W, C]``::

        c = avg_pool_space(context, kv_pool)
        y = x + out(MHA(query(LN_q(x)), key(LN_kv(c)), value(LN_kv(c))))

    ``query``, ``key``, ``value`` are biased Dense layers to ``dim`` channels,
    ``out`` a biased Dense back to ``C``; the residual adds the un-normalised
    ``x``. Every query position attends to every (pooled) key position.

    Chosen where the paper (Sec. 3.4: 4 heads, Q from the spatially masked
    view, K = V from the frequency-masked one) is silent: pre-LayerNorm on both
    inputs (separate affine parameters; ``epsilon=1e-5``, PyTorch's), pooling
    before the norm, no positional encoding (the two views share positions, and
    the attention is equivariant to permuting the query positions), no dropout.
    Initialisation follows PyTorch's ``nn.MultiheadAttention``: Xavier-uniform
    projections with zero biases (PyTorch draws the packed ``[3 dim, C]``
    in-projection at once, a ``sqrt(2)`` smaller bound when ``C = dim``; here
    each projection is drawn on its own), and the output projection with
    ``nn.Linear``'s default kernel and a zero bias.

    Attributes:
      dim: attention width (split over ``heads``).
      heads: attention heads (4 in MASF).
      kv_pool: average ``kv_pool x kv_pool`` windows of ``context`` first (1: none).
    """

    dim: int
    heads: int = 4
    kv_pool: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        if self.dim % self.heads:
            raise ValueError(f"CrossAttention(dim={self.dim}) does not split into {self.heads} heads")
        b, h, w, c = x.shape
        ctx = avg_pool_space(context, self.kv_pool)
        proj = lambda name: nn.Dense(
            self.dim, kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.zeros, name=name
        )
        xn = nn.LayerNorm(epsilon=1e-5, name="norm_q")(x.astype(jnp.float32))
        cn = nn.LayerNorm(epsilon=1e-5, name="norm_kv")(ctx.astype(jnp.float32))
        q = proj("query")(xn).reshape(b, h * w, self.dim)
        k = proj("key")(cn).reshape(b, -1, self.dim)
        v = proj("value")(cn).reshape(b, -1, self.dim)
        a = multi_head_attention(q, k, v, self.heads)
        y = nn.Dense(c, kernel_init=torch_default_kernel_init, bias_init=nn.initializers.zeros, name="out")(a)
        return x + y.reshape(b, h, w, c)


class ResidualBlock(nn.Module):
    """``x + conv3x3(GELU(conv3x3(x)))`` on NHWC maps, with an optional pre-LayerNorm.

    The paper's student has "two Residual Blocks" after SSCA and says nothing of
    their form. Chosen here: ResNet's basic block (He et al., CVPR 2016) without
    BatchNorm (the student already ends SDM with one; per-sample behaviour stays
    independent of the batch), GELU (MASF's activation elsewhere, exact form),
    'same' zero padding, biased convs with PyTorch's default initialisation,
    identity skip. ``pre_norm=True`` (the cheap alternative) applies a channel
    LayerNorm to the residual branch's input, ``x + conv(GELU(conv(LN(x))))``.

    Attributes:
      dim: channels in and out.
      pre_norm: LayerNorm the branch input.
    """

    dim: int
    pre_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.dim:
            raise ValueError(f"ResidualBlock(dim={self.dim}) got {x.shape[-1]} channels")
        conv = lambda name: nn.Conv(
            self.dim,
            (3, 3),
            padding="SAME",
            kernel_init=torch_default_kernel_init,
            bias_init=torch_default_bias_init(9 * self.dim),
            name=name,
        )
        hidden = nn.LayerNorm(epsilon=1e-5, name="norm")(x) if self.pre_norm else x
        hidden = nn.gelu(conv("conv0")(hidden), approximate=False)
        return x + conv("conv1")(hidden)
