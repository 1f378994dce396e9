"""Point-MAE encoder (as M3DM and MADFlow run it) in pure JAX/Flax, with FPS and KNN.

Facts from the public code (Pang et al. 2022, "Masked Autoencoders for Point
Cloud Self-supervised Learning", ``Pang-Yatian/Point-MAE@7445a68``; the
``PointTransformer`` wrapper of ``nomewang/M3DM@62b7f46``, which MADFlow
copies; the CUDA ops ``pointnet2_ops`` (FPS) and ``KNN_CUDA``), summarised in the
project notes ``notes/pointcloud.md`` and ``golden/README-pointmae.md``:

- Grouping: ``G`` centres by farthest point sampling starting at point 0, then
  the ``M`` nearest points of each centre (the centre itself included, first);
  neighbourhoods are relative to the centre. M3DM uses G=1024, M=128.
- Patch embedding (mini-PointNet, per group): 1x1 conv 3->128, BN, ReLU, 1x1
  conv 128->256; max over the M points; the *global max first*, then the
  per-point features (512 channels); 1x1 conv 512->512, BN, ReLU, 1x1 conv
  512->384; max over points -> one 384-d token per group.
- Positional embedding of the absolute centres: Linear 3->128, exact (erf) GELU,
  Linear 128->384, re-added before *every* block. No CLS token.
- 12 pre-norm transformer blocks (384 wide, 6 heads of 64, qkv without bias,
  scale 1/8, MLP 1536 with exact GELU), LayerNorm eps 1e-5.
- Output: blocks 3, 7 and 11 (0-based, without the positional embedding), each
  through the shared final LayerNorm, concatenated -> 1152 channels per group.

**BatchNorm uses batch statistics.** Neither M3DM nor MADFlow calls ``.eval()``
on the model, so its two BatchNorm1d layers normalise with the mean and biased
variance over the G*M points of the one cloud they are fed (batch size 1); the
checkpoint's running statistics are ignored. :class:`BatchStatNorm` does the
same per cloud (``use_running_average=True`` switches to the stored statistics).
Drop-path is also active in the reference (stochastic features); this port is
deterministic, as the reference would be in ``eval()`` mode for those layers.

**FPS** (:func:`farthest_point_sample`) follows ``pointnet2_ops``' kernel: start at
index 0, distances ``(dx*dx + dy*dy) + dz*dz`` in float32, running minimum,
argmax; points with ``x*x + y*y + z*z <= 1e-3`` are never updated nor picked.
Ties: the kernel runs ``T = min(512, 2**floor(log2 N))`` threads; thread ``t``
scans ``k = t, t+T, ...`` keeping the first maximum, then a tree reduction over
threads (pairs ``(t, t+T/2)``, ``(t, t+T/4)``, ...) keeps the lower slot on ties.
``tie_break="cuda"`` reproduces that exactly; ``"lowest_index"`` picks the
smallest index (``jnp.argmax``). **KNN** (:func:`knn`) is KNN_CUDA's brute force:
squared distances ``((dx*dx) + dy*dy) + dz*dz``, ascending, ties to the lower
point index (``lax.top_k`` guarantees that order).

**Back to the grid** (M3DM ``interpolating_points`` and its feature map):
inverse-squared-distance weights ``1/(d2 + 1e-8)`` over the 3 nearest centres
(normalised to sum 1), scattered onto the organised H x W grid (missing pixels
0), then ``AvgPool2d(3, stride 1)`` and ``AdaptiveAvgPool2d(S)``; both pools are
linear and separable, so :func:`pool_grid` applies them as two small matrices.
M3DM computes ``d2`` as ``-2 a.b + |a|^2 + |b|^2`` in float32 (``distance=
"expanded"``, the default); ``"direct"`` uses differences (better conditioned).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

FETCH_IDX = (3, 7, 11)


# ----------------------------------------------------------------------------- sampling
def cuda_fps_threads(n: int) -> int:
    """Thread count of the pointnet2_ops FPS kernel for ``n`` points."""
    return max(min(1 << int(math.log2(max(n, 1))), 512), 1)


def _sqdist_to(points: jax.Array, p: jax.Array) -> jax.Array:
    dx = points[..., 0] - p[0]
    dy = points[..., 1] - p[1]
    dz = points[..., 2] - p[2]
    return (dx * dx + dy * dy) + dz * dz


def farthest_point_sample(
    points: jax.Array,
    num_samples: int,
    valid: jax.Array | None = None,
    tie_break: str = "cuda",
    num_threads: int | None = None,
) -> jax.Array:
    """Indices (int32, ``(num_samples,)``) of farthest point sampling of ``points[N, 3]``.

    ``valid``: optional bool mask (padding); invalid points are treated like the
    kernel's near-origin points: never updated, never picked. Index 0 is always
    the first sample, as in the kernel (put a valid point first). ``num_threads``
    overrides the CUDA thread count used for ``tie_break="cuda"`` (it depends on
    the unpadded N, which matters only when N < 512 and there are exact ties).
    """
    pts = jnp.asarray(points, jnp.float32)
    n = pts.shape[0]
    mag = (pts[:, 0] * pts[:, 0] + pts[:, 1] * pts[:, 1]) + pts[:, 2] * pts[:, 2]
    cand = mag > 1e-3
    if valid is not None:
        cand = cand & valid
    t = num_threads or cuda_fps_threads(n)
    rows = -(-n // t)
    lanes = jnp.arange(t)

    def pick(v):
        if tie_break == "lowest_index":
            return jnp.argmax(v).astype(jnp.int32)
        grid = jnp.pad(v, (0, rows * t - n), constant_values=-1.0).reshape(rows, t)
        r = jnp.argmax(grid, axis=0)  # first maximum in each thread's scan order
        tv = jnp.take_along_axis(grid, r[None], 0)[0]
        tk = jnp.where(tv < 0, 0, r * t + lanes)  # a thread with no candidate reports (-1, 0)
        width = t
        while width > 1:
            half = width // 2
            take = tv[half:width] > tv[:half]
            tk = jnp.where(take, tk[half:width], tk[:half])
            tv = jnp.where(take, tv[half:width], tv[:half])
            width = half
        return tk[0].astype(jnp.int32)

    if tie_break not in ("cuda", "lowest_index"):
        raise ValueError(f"tie_break must be 'cuda' or 'lowest_index', got {tie_break!r}")

    def body(j, carry):
        temp, idx = carry
        d = _sqdist_to(pts, pts[idx[j - 1]])
        temp = jnp.where(cand, jnp.minimum(temp, d), temp)
        return temp, idx.at[j].set(pick(jnp.where(cand, temp, -1.0)))

    temp0 = jnp.full((n,), 1e10, jnp.float32)
    idx0 = jnp.zeros((num_samples,), jnp.int32)
    return lax.fori_loop(1, num_samples, body, (temp0, idx0))[1]


def knn(ref: jax.Array, query: jax.Array, k: int, valid: jax.Array | None = None) -> jax.Array:
    """Indices (int32, ``(Q, k)``) of the ``k`` nearest ``ref[N,3]`` points of each ``query[Q,3]``.

    Ascending squared distance, ties to the lower ref index (KNN_CUDA's stable
    insertion sort). Invalid ``ref`` points (mask ``valid``) are never returned
    unless fewer than ``k`` are valid.
    """
    ref = jnp.asarray(ref, jnp.float32)
    query = jnp.asarray(query, jnp.float32)
    d = jnp.zeros((query.shape[0], ref.shape[0]), jnp.float32)
    for c in range(3):
        diff = query[:, None, c] - ref[None, :, c]
        d = d + diff * diff
    if valid is not None:
        d = jnp.where(valid[None, :], d, jnp.inf)
    return lax.top_k(-d, k)[1].astype(jnp.int32)


def group_points(
    points: jax.Array,
    num_group: int,
    group_size: int,
    valid: jax.Array | None = None,
    tie_break: str = "cuda",
    num_threads: int | None = None,
) -> dict[str, jax.Array]:
    """FPS centres + KNN neighbourhoods of one cloud ``points[N,3]`` (Point-MAE's ``Group``)."""
    center_idx = farthest_point_sample(points, num_group, valid, tie_break, num_threads)
    center = points[center_idx]
    knn_idx = knn(points, center, group_size, valid)
    neighborhood = points[knn_idx] - center[:, None, :]
    return {"center_idx": center_idx, "center": center, "knn_idx": knn_idx, "neighborhood": neighborhood}


# ----------------------------------------------------------------------------- encoder
class BatchStatNorm(nn.Module):
    """BatchNorm over every axis but the last, with this call's statistics (torch ``train()`` BN).

    Mean and *biased* variance of the input; ``batch_stats`` holds the
    checkpoint's running statistics, used only when ``use_running_average``.
    Nothing is updated: apply needs no mutable collection.
    """

    epsilon: float = 1e-5
    use_running_average: bool = False

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        rm = self.variable("batch_stats", "mean", jnp.zeros, (c,))
        rv = self.variable("batch_stats", "var", jnp.ones, (c,))
        if self.use_running_average:
            mean, var = rm.value, rv.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
        return (x - mean) * lax.rsqrt(var + self.epsilon) * scale + bias


def _gelu(x):
    return nn.gelu(x, approximate=False)


class MiniPointNet(nn.Module):
    """Point-MAE's patch embedding: ``neighborhood[G, M, 3] -> tokens[G, C]``."""

    dim: int = 384
    use_running_average: bool = False
    precision: Any = None

    @nn.compact
    def __call__(self, nb):
        dense = lambda f, name: nn.Dense(f, precision=self.precision, name=name)
        bn = lambda name: BatchStatNorm(1e-5, self.use_running_average, name=name)
        f = dense(128, "first_conv_0")(nb)
        f = nn.relu(bn("first_conv_1")(f))
        f = dense(256, "first_conv_3")(f)
        g = jnp.max(f, axis=1, keepdims=True)
        f = jnp.concatenate([jnp.broadcast_to(g, f.shape), f], axis=-1)  # global max first
        f = dense(512, "second_conv_0")(f)
        f = nn.relu(bn("second_conv_1")(f))
        f = dense(self.dim, "second_conv_3")(f)
        return jnp.max(f, axis=1)


class _Block(nn.Module):
    dim: int = 384
    heads: int = 6
    mlp_ratio: int = 4
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        g, d = x.shape[0], self.dim
        hd = d // self.heads
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, name=name)
        dense = lambda f, name, bias=True: nn.Dense(f, use_bias=bias, precision=self.precision, name=name)
        h = ln("norm1")(x)
        qkv = dense(3 * d, "attn_qkv", bias=False)(h).reshape(g, 3, self.heads, hd)
        q, k, v = (jnp.transpose(qkv[:, i], (1, 0, 2)) for i in range(3))  # (heads, G, hd)
        a = jnp.einsum("hqd,hkd->hqk", q, k, precision=self.precision) * (hd**-0.5)
        a = jax.nn.softmax(a, axis=-1)
        o = jnp.einsum("hqk,hkd->qhd", a, v, precision=self.precision).reshape(g, d)
        x = x + dense(d, "attn_proj")(o)
        h = _gelu(dense(d * self.mlp_ratio, "mlp_fc1")(ln("norm2")(x)))
        return x + dense(d, "mlp_fc2")(h)


class PointMAEEncoder(nn.Module):
    """Point-MAE encoder on one cloud: ``__call__(points[N,3], valid[N]=None) -> dict``.

    Returns ``center_idx (G,)``, ``center (G,3)``, ``knn_idx (G,M)``,
    ``neighborhood (G,M,3)``, ``tokens (G,384)``, ``pos (G,384)``, ``block{i}``
    (raw output of block i, G x 384), ``block{i}_norm`` for i in 3, 7, 11 and
    ``features (G, 1152)`` = [block3_norm | block7_norm | block11_norm]. For a
    batch, ``jax.vmap`` the apply (BatchNorm statistics stay per cloud, as the
    batch-1 reference computes them).
    """

    num_group: int = 1024
    group_size: int = 128
    dim: int = 384
    depth: int = 12
    heads: int = 6
    use_running_average: bool = False
    tie_break: str = "cuda"
    num_threads: int | None = None
    precision: Any = None

    @nn.compact
    def __call__(self, points, valid=None):
        out = group_points(points, self.num_group, self.group_size, valid, self.tie_break, self.num_threads)
        tokens = MiniPointNet(self.dim, self.use_running_average, self.precision, name="encoder")(out["neighborhood"])
        p = nn.Dense(128, precision=self.precision, name="pos_embed_0")(out["center"])
        pos = nn.Dense(self.dim, precision=self.precision, name="pos_embed_2")(_gelu(p))
        out.update(tokens=tokens, pos=pos)
        norm = nn.LayerNorm(epsilon=1e-5, name="norm")
        x = tokens
        for i in range(self.depth):
            x = _Block(self.dim, self.heads, 4, self.precision, name=f"blocks_{i}")(x + pos)
            out[f"block{i}"] = x
        for i in FETCH_IDX:
            out[f"block{i}_norm"] = norm(out[f"block{i}"])
        out["features"] = jnp.concatenate([out[f"block{i}_norm"] for i in FETCH_IDX], axis=-1)
        return out


# ----------------------------------------------------------------------------- to the grid
def three_nn_interpolate(
    points: jax.Array, centers: jax.Array, features: jax.Array, distance: str = "expanded"
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """M3DM's ``interpolating_points`` for one cloud: returns ``(values[N,C], idx[N,3], weight[N,3])``.

    ``distance="expanded"`` computes ``d2 = -2 p.c + |p|^2 + |c|^2`` in float32 as
    M3DM does (slightly negative at the centres, hence weights a hair outside
    [0, 1]); ``"direct"`` sums squared differences. Ties go to the lower centre
    index. Weights are ``1/(d2 + 1e-8)`` normalised to sum 1.
    """
    p = jnp.asarray(points, jnp.float32)
    c = jnp.asarray(centers, jnp.float32)
    if distance == "expanded":
        d2 = -2.0 * jnp.matmul(p, c.T, precision=lax.Precision.HIGHEST)
        d2 = d2 + jnp.sum(p**2, -1)[:, None]
        d2 = d2 + jnp.sum(c**2, -1)[None, :]
    elif distance == "direct":
        d2 = jnp.zeros((p.shape[0], c.shape[0]), jnp.float32)
        for k in range(3):
            diff = p[:, None, k] - c[None, :, k]
            d2 = d2 + diff * diff
    else:
        raise ValueError(f"distance must be 'expanded' or 'direct', got {distance!r}")
    neg, idx = lax.top_k(-d2, 3)
    w = 1.0 / (-neg + 1e-8)
    w = w / jnp.sum(w, -1, keepdims=True)
    values = jnp.einsum("nk,nkc->nc", w, features[idx], precision=lax.Precision.HIGHEST)
    return values, idx.astype(jnp.int32), w


def scatter_to_grid(
    values: jax.Array, flat_index: jax.Array, height: int, width: int, valid: jax.Array | None = None
) -> jax.Array:
    """Put per-point ``values[N,C]`` at row-major pixels ``flat_index`` of a zero ``(H,W,C)`` grid."""
    if valid is not None:
        values = jnp.where(valid[:, None], values, 0.0)
        flat_index = jnp.where(valid, flat_index, height * width)  # out of range: dropped
    grid = jnp.zeros((height * width, values.shape[-1]), values.dtype)
    grid = grid.at[flat_index].set(values, mode="drop")
    return grid.reshape(height, width, values.shape[-1])


def pool_matrix(length: int, size: int) -> np.ndarray:
    """``(size, length)`` matrix of ``AdaptiveAvgPool(size)`` after ``AvgPool(3, stride 1)``.

    Adaptive windows are ``[floor(i L / S), ceil((i+1) L / S))`` over ``L = length - 2``.
    """
    inner = length - 2
    box = np.zeros((inner, length), np.float64)
    for i in range(inner):
        box[i, i : i + 3] = 1.0 / 3.0
    adapt = np.zeros((size, inner), np.float64)
    for i in range(size):
        a, b = (i * inner) // size, -(-((i + 1) * inner) // size)
        adapt[i, a:b] = 1.0 / (b - a)
    return (adapt @ box).astype(np.float32)


def pool_grid(grid: jax.Array, size: int) -> jax.Array:
    """``AdaptiveAvgPool2d(size)(AvgPool2d(3, 1)(grid))`` for ``grid[H, W, C]`` -> ``(size, size, C)``."""
    mh = jnp.asarray(pool_matrix(grid.shape[0], size))
    mw = jnp.asarray(pool_matrix(grid.shape[1], size))
    return jnp.einsum("ih,hwc,jw->ijc", mh, grid, mw, precision=lax.Precision.HIGHEST)


def compact_cloud(cloud: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Organised ``cloud[H,W,3]`` -> ``(points[H*W,3], valid[H*W], flat_index[H*W])`` with fixed shapes.

    Valid pixels (all three coordinates non-zero, M3DM's rule) come first in
    row-major order, so ``points[:n_valid]`` equals M3DM's ``pc[nonzero_indices]``
    and FPS starts at the first valid pixel; the padding rows are masked.
    """
    flat = cloud.reshape(-1, 3)
    ok = jnp.all(flat != 0, axis=-1)
    order = jnp.argsort(~ok, stable=True)
    return flat[order], ok[order], order.astype(jnp.int32)


def cloud_feature_map(
    module: PointMAEEncoder, variables, cloud: jax.Array, size: int = 24, distance: str = "expanded"
) -> dict[str, jax.Array]:
    """M3DM/MADFlow point branch on one organised cloud ``[H,W,3]``: encoder, 3-NN, grid, pools.

    Returns the encoder dict plus ``dense (H,W,C)`` and ``pooled (size,size,C)``.
    Jit-able with fixed shapes: the number of valid pixels may vary between calls.
    For exact CUDA FPS tie semantics on clouds with fewer than 512 valid points,
    set ``module.num_threads``.
    """
    h, w = cloud.shape[:2]
    points, valid, flat_index = compact_cloud(cloud)
    out = module.apply(variables, points, valid)
    values, _, _ = three_nn_interpolate(points, out["center"], out["features"], distance)
    out["dense"] = scatter_to_grid(values, flat_index, h, w, valid)
    out["pooled"] = pool_grid(out["dense"], size)
    return out
