"""MASF's spectral-anchored memory bank (SAMB, paper Sec. 3.5) and uncertainty-gated fusion (UGHF, Sec. 3.6).

SAMB. Every patch embedding ``p`` (a ``C``-vector of a teacher map) becomes a
joint spatial-spectral prototype::

    p_spec  = MLP_2(pad_to_C(|FFT_1(p)|))         (fft_magnitude_features, SpectralAnchor)
    p_joint = L2_normalize(p + p_spec)            (spectral_prototypes)

Prototypes of the normal training patches are subsampled by PatchCore's greedy
k-center coreset (Roth et al., CVPR 2022, Sec. 3.2; :func:`greedy_coreset`;
ratio 0.1, at most 3000 per scale: :func:`coreset_size`), and a test patch
scores the mean Euclidean distance to its ``k`` nearest prototypes
(:func:`knn_score`, "mean_k_dist").

UGHF. One learnable log-variance ``log s_l^2`` per scale; the fused map is
``sum_l w_l s_l`` with ``w = softmax(-log s^2)`` (:func:`uncertainty_weights`,
:func:`fuse_maps`). The paper says the log-variances are "learned by gradient
descent" and nothing more; the choice here is Kendall & Gal's heteroscedastic
objective on a per-scale error (:func:`heteroscedastic_loss`).

Everything is float32 (the paper lost whole categories to NaN in float16 FFTs;
:func:`fft_magnitude_features` casts before transforming) and pure
``jax.numpy``; :class:`SpectralAnchor` and :class:`UncertaintyFusion` are the
linen modules that hold the parameters (the MLP, the log-variances) and call
these functions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxflow_ad.flows.coupling import torch_default_bias_init, torch_default_kernel_init
from jaxflow_ad.nn.mapping import l2_normalize_channels

_HIGHEST = lax.Precision.HIGHEST

# --------------------------------------------------------------------------------------------------
# coreset


def coreset_size(n: int, ratio: float = 0.1, max_size: int | None = 3000) -> int:
    """Coreset size for ``n`` candidates: ``int(n * ratio)`` (PatchCore's rounding), at least 1, at most ``max_size``.

    MASF: "ratio 0.1, max 3,000/scale" (Sec. 3.5). ``max_size=None``: no cap.
    """
    if n < 1:
        raise ValueError(f"a coreset needs at least one candidate, got n={n}")
    size = max(1, int(n * ratio))
    return min(size, max_size) if max_size is not None else size


def jl_min_dim(n: int, eps: float = 0.9) -> int:
    """Johnson-Lindenstrauss dimension for ``n`` points at distortion ``eps``: ``4 ln n / (eps^2/2 - eps^3/3)``.

    scikit-learn's ``johnson_lindenstrauss_min_dim``; anomalib's PatchCore projects
    with ``SparseRandomProjection(eps=0.9)``, i.e. to this many dimensions. A
    convenience for choosing ``projection_dim`` of :func:`greedy_coreset`.
    """
    return int(4.0 * math.log(n) / (eps**2 / 2.0 - eps**3 / 3.0))


def sparse_random_projection(key: jax.Array, d_in: int, d_out: int, density: float | None = None) -> jax.Array:
    """A ``[d_in, d_out]`` sparse random projection matrix (Li, Hastie & Church, KDD 2006), float32.

    Entries are ``+-sqrt(1 / density) / sqrt(d_out)`` with probability
    ``density / 2`` each and 0 otherwise, as scikit-learn's
    ``SparseRandomProjection`` (which PatchCore implementations use before the
    coreset); ``density=None`` is scikit-learn's ``"auto"``, ``1 / sqrt(d_in)``.
    Squared distances are preserved in expectation. Returned dense: ``x @ P``.
    """
    density = 1.0 / math.sqrt(d_in) if density is None else float(density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must lie in (0, 1], got {density}")
    k_nz, k_sign = jax.random.split(key)
    nonzero = jax.random.bernoulli(k_nz, density, (d_in, d_out))
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (d_in, d_out)), 1.0, -1.0)
    scale = math.sqrt(1.0 / density) / math.sqrt(d_out)
    return jnp.where(nonzero, sign * scale, 0.0).astype(jnp.float32)


def _sq_dist_to_row(z: jax.Array, j: jax.Array) -> jax.Array:
    """``||z_i - z_j||^2`` for every row ``i``, by direct differences (exact 0 for duplicates of row ``j``).

    XLA fuses the subtraction into the reduction, so no ``[N, D]`` temporary is kept.
    """
    diff = z - lax.dynamic_index_in_dim(z, j, axis=0, keepdims=True)
    return jnp.sum(diff * diff, axis=1)


@functools.partial(jax.jit, static_argnames=("k",))
def _greedy_k_center(z: jax.Array, k: int, start: jax.Array) -> jax.Array:
    start = jnp.asarray(start, jnp.int32)
    idx = jnp.zeros((k,), jnp.int32).at[0].set(start)
    # selected rows get -inf so they are never picked again (indices stay distinct even when
    # every remaining distance is 0); min(-inf, d) keeps them there
    mind = _sq_dist_to_row(z, start).at[start].set(-jnp.inf)

    def body(i, carry):
        idx, mind = carry
        j = jnp.argmax(mind).astype(jnp.int32)  # farthest from the selected set; ties: lowest index
        mind = jnp.minimum(mind, _sq_dist_to_row(z, j)).at[j].set(-jnp.inf)
        return idx.at[i].set(j), mind

    idx, _ = lax.fori_loop(1, k, body, (idx, mind))
    return idx


def greedy_coreset(
    x: jax.Array,
    k: int,
    *,
    start: int | jax.Array = 0,
    projection_dim: int | None = None,
    seed: int = 0,
) -> jax.Array:
    """Indices ``[k]`` (int32) of PatchCore's greedy k-center coreset of the rows of ``x [N, D]``.

    The greedy 2-approximation of the k-center problem (Gonzalez 1985; Sener &
    Savarese, ICLR 2018), as PatchCore's Algorithm 1: start from row ``start``;
    then ``k - 1`` times pick the row farthest (Euclidean) from the selected
    set, keeping every row's distance to the set as a running minimum updated
    with the newly picked row only (``O(N D)`` per pick, ``O(N)`` memory).

    * ``start`` is itself the first index returned (PatchCore draws it at
      random; anomalib draws one it then does not return: pass a random
      ``start`` for the former).
    * Ties go to the lowest index (``argmax``). Picked rows are never picked
      again, so the ``k`` indices are distinct even when ``x`` has fewer than
      ``k`` distinct rows (duplicates of picked rows then come in index order).
    * Distances are float32 direct differences, so a duplicate of a picked row
      has distance exactly 0; only squared distances are compared (the same
      order as distances).
    * ``projection_dim``: first project ``x`` with a seeded
      :func:`sparse_random_projection` to that many dimensions (PatchCore's
      speed-up; the distances for selection are those in the projected space,
      the indices index ``x``). ``None``: select in the original space.

    The result depends only on ``x``, ``k``, ``start``, ``projection_dim`` and
    ``seed``; ``k`` and ``projection_dim`` are static (one compilation each).
    The coverage radius ``max_i min_{j in S_k} ||x_i - x_j||`` is non-increasing
    in ``k`` since the first ``k`` picks of a longer run are the ``k``-run.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"greedy_coreset wants [N, D] rows, got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"coreset size k={k} must lie in [1, N={n}]")
    if isinstance(start, int) and not 0 <= start < n:
        raise ValueError(f"start={start} is not a row of x (N={n})")
    if projection_dim is not None:
        p = sparse_random_projection(jax.random.PRNGKey(seed), x.shape[1], int(projection_dim))
        x = jnp.dot(x, p, precision=_HIGHEST)
    return _greedy_k_center(x, k, jnp.asarray(start, jnp.int32))


@jax.jit
def coverage_radius(x: jax.Array, indices: jax.Array) -> jax.Array:
    """``max_i min_{j in indices} ||x_i - x_j||``: the k-center objective of a coreset (direct differences)."""
    x = jnp.asarray(x, jnp.float32)

    def step(mind, j):
        return jnp.minimum(mind, _sq_dist_to_row(x, j)), None

    mind, _ = lax.scan(step, jnp.full((x.shape[0],), jnp.inf, jnp.float32), jnp.asarray(indices, jnp.int32))
    return jnp.sqrt(jnp.max(mind))


# --------------------------------------------------------------------------------------------------
# k-NN score


@functools.partial(jax.jit, static_argnames=("k", "block"))
def knn_score(queries: jax.Array, bank: jax.Array, k: int = 1, *, block: int = 1024) -> jax.Array:
    """``[M]``: the mean Euclidean distance from each query row to its ``k`` nearest ``bank`` rows.

    MASF's ``s_bank = mean_k_dist(p_joint(x), M)`` (Sec. 3.5); ``k = 1`` is
    PatchCore's nearest-neighbour score (before its reweighting). The paper does
    not give ``k``.

    Queries ``[M, D]`` are processed ``block`` rows at a time (``lax.map`` over a
    zero-padded ``[ceil(M / block), block, D]``), so memory is ``O(block * K)``
    whatever ``M``. Precision, in two steps:

    1. *Search*: squared distances ``||q||^2 + ||b||^2 - 2 q.b`` (the matrix
       product at ``Precision.HIGHEST``, so no TF32 on GPUs); the ``k`` smallest
       are found with ``lax.top_k`` (ties: lowest bank index). Cancellation makes
       this inexact, by about ``1e-7 (||q||^2 + ||b||^2)``.
    2. *Values*: the distances to the ``k`` rows found are recomputed by direct
       differences, ``sqrt(sum((q - b)^2))``, which is exact to float32 rounding
       (and exactly 0 for a query equal to a bank row). A neighbour can only be
       exchanged for another whose squared distance is within the step-1 error,
       so the score is off by at most that much.

    Not meant to be differentiated (``sqrt`` at 0).
    """
    queries = jnp.asarray(queries, jnp.float32)
    bank = jnp.asarray(bank, jnp.float32)
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"knn_score wants [M, D] queries and [K, D] bank, got {queries.shape} and {bank.shape}")
    m, d = queries.shape
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k={k} must lie in [1, K={bank.shape[0]}]")
    if m == 0:
        return jnp.zeros((0,), jnp.float32)
    bs = max(1, min(block, m))
    nb = -(-m // bs)
    q = jnp.pad(queries, ((0, nb * bs - m), (0, 0))).reshape(nb, bs, d)
    bank_sq = jnp.sum(bank * bank, axis=1)

    def one_block(qb):
        d2 = jnp.sum(qb * qb, axis=1, keepdims=True) + bank_sq[None, :] - 2.0 * jnp.dot(qb, bank.T, precision=_HIGHEST)
        _, nn_idx = lax.top_k(-d2, k)  # [bs, k]
        diff = qb[:, None, :] - bank[nn_idx]  # [bs, k, D]
        return jnp.mean(jnp.sqrt(jnp.sum(diff * diff, axis=-1)), axis=-1)

    return lax.map(one_block, q).reshape(nb * bs)[:m]


# --------------------------------------------------------------------------------------------------
# spectral prototypes


def fft_magnitude_features(p: jax.Array, *, onesided: bool = True, norm: str = "ortho") -> jax.Array:
    """``pad_to_C(|FFT_1(p)|)`` over the channel (last) axis: ``[..., C]`` float32.

    MASF's spectral anchor input (Sec. 3.5). The FFT of a real ``C``-vector is
    Hermitian, so its ``C//2 + 1`` one-sided magnitudes (``rfft``) carry all of
    it; the paper's ``pad_to_C`` reads as zero-padding those back to ``C``
    (the tail is zeros; for ``C >= 1``, ``C//2 + 1 <= C``, so nothing is ever
    truncated). ``onesided=False``: the full, redundant ``|fft(p)|`` (already
    ``C`` long). The magnitude is invariant to circular shifts of the channels.

    ``norm="ortho"`` (chosen; the paper names a normalisation only for the 2-D
    FFT of SDM, where it is ``ortho``) keeps ``sum |P|^2 = sum p^2`` for the full
    transform, so the magnitudes have the scale of ``p``. The input is cast to
    float32 first: the paper's float16 FFTs overflowed (carpet, grid).
    """
    p = jnp.asarray(p).astype(jnp.float32)
    c = p.shape[-1]
    if onesided:
        mag = jnp.abs(jnp.fft.rfft(p, axis=-1, norm=norm)).astype(jnp.float32)
        f = mag.shape[-1]
        if f < c:
            mag = jnp.pad(mag, [(0, 0)] * (mag.ndim - 1) + [(0, c - f)])
        return mag[..., :c]
    return jnp.abs(jnp.fft.fft(p, axis=-1, norm=norm)).astype(jnp.float32)


def spectral_prototypes(p: jax.Array, mlp_out: jax.Array, eps: float = 1e-12) -> jax.Array:
    """The joint prototype ``L2_normalize(p + p_spec)`` over the channel axis (Sec. 3.5), float32.

    ``mlp_out`` is ``p_spec = MLP_2(fft_magnitude_features(p))``, same shape as
    ``p``. A zero sum stays zero (``eps`` guards the division).
    """
    s = jnp.asarray(p, jnp.float32) + jnp.asarray(mlp_out, jnp.float32)
    return l2_normalize_channels(s, eps)


class SpectralAnchor(nn.Module):
    """SAMB's prototype map ``p -> L2_normalize(p + MLP_2(pad_to_C(|FFT_1(p)|)))`` (Sec. 3.5).

    ``MLP_2`` is Dense(C -> hidden), GELU (exact, PyTorch's default), Dense(hidden
    -> C), with biases and PyTorch's default ``nn.Linear`` initialisation. The
    paper gives neither the hidden width nor the activation: chosen here,
    ``hidden = C`` and GELU (the activation of MASF's other blocks). Applies to
    ``[..., C]`` (a whole NHWC map or ``[N, C]`` rows).

    How the MLP is trained is not stated in the paper (the bank itself is not a
    loss); the caller decides (e.g. frozen at initialisation, or trained with the
    student).

    Attributes:
      hidden: hidden width; ``None``: ``C``.
      onesided, norm: see :func:`fft_magnitude_features`.
    """

    hidden: int | None = None
    onesided: bool = True
    norm: str = "ortho"

    @nn.compact
    def __call__(self, p: jax.Array) -> jax.Array:
        c = p.shape[-1]
        hidden = self.hidden or c
        f = fft_magnitude_features(p, onesided=self.onesided, norm=self.norm)
        h = nn.Dense(hidden, kernel_init=torch_default_kernel_init, bias_init=torch_default_bias_init(c), name="fc0")(f)
        h = nn.gelu(h, approximate=False)
        h = nn.Dense(c, kernel_init=torch_default_kernel_init, bias_init=torch_default_bias_init(hidden), name="fc1")(h)
        return spectral_prototypes(p, h)


# --------------------------------------------------------------------------------------------------
# UGHF


def uncertainty_weights(log_vars: jax.Array) -> jax.Array:
    """UGHF's fusion weights ``w_l = exp(-log s_l^2) / sum_m exp(-log s_m^2)`` = ``softmax(-log_vars)`` (Sec. 3.6).

    ``[L]`` float32, positive, summing to 1; a larger log-variance (a less
    reliable scale) gets a smaller weight. (The paper's "exp exp" is an
    extraction artefact.)
    """
    return jax.nn.softmax(-jnp.asarray(log_vars, jnp.float32), axis=0)


def fuse_maps(maps: jax.Array | Sequence[jax.Array], log_vars: jax.Array) -> jax.Array:
    """``s_fused = sum_l w_l s_l`` (Sec. 3.6): ``maps [L, B, H, W]`` (or any ``[L, ...]``, or a list) -> ``[B, H, W]``.

    The per-scale maps must already share a resolution (the caller upsamples).
    """
    maps = jnp.asarray(maps if hasattr(maps, "ndim") else jnp.stack(list(maps)), jnp.float32)
    w = uncertainty_weights(log_vars)
    if maps.shape[0] != w.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps but {w.shape[0]} log-variances")
    return jnp.tensordot(w, maps, axes=1)


def heteroscedastic_loss(errors: jax.Array, log_vars: jax.Array, *, detach_errors: bool = False) -> jax.Array:
    """``sum_l exp(-log s_l^2) err_l + log s_l^2``: the objective chosen for UGHF's log-variances.

    The paper says only that the log-variances are learned "by gradient descent";
    training sees no anomalies, so something must tie them to the data. Chosen
    here: Kendall & Gal's heteroscedastic (homoscedastic task) uncertainty
    weighting (Kendall, Gal & Cipolla, CVPR 2018, Eq. 7, up to their factor
    1/2 on both terms, which does not move the optimum) on a per-scale error
    ``err_l >= 0`` (e.g. the scale's distillation loss). For fixed errors the
    minimum is at ``log s_l^2 = log err_l``, so a scale with larger error gets a
    larger variance and a smaller fusion weight, ``w_l ~ 1 / err_l``.

    ``detach_errors``: stop gradients into ``errors``, so the loss trains only the
    log-variances and does not reweight the student's own loss (otherwise the
    student sees ``exp(-log s_l^2)`` times its scale-``l`` gradient, as in
    Kendall & Gal's multi-task use).
    """
    errors = jnp.asarray(errors, jnp.float32)
    if detach_errors:
        errors = lax.stop_gradient(errors)
    log_vars = jnp.asarray(log_vars, jnp.float32)
    return jnp.sum(jnp.exp(-log_vars) * errors + log_vars)


class UncertaintyFusion(nn.Module):
    """UGHF's head: holds ``params["log_vars"] [num_scales]`` (zeros: equal weights) and fuses maps with them.

    ``__call__(maps [L, ...])`` is :func:`fuse_maps`; ``loss(errors [L])`` is
    :func:`heteroscedastic_loss`; ``weights()`` is :func:`uncertainty_weights`.
    """

    num_scales: int = 3

    def setup(self):
        self.log_vars = self.param("log_vars", nn.initializers.zeros, (self.num_scales,), jnp.float32)

    def __call__(self, maps: jax.Array | Sequence[jax.Array]) -> jax.Array:
        return fuse_maps(maps, self.log_vars)

    def weights(self) -> jax.Array:
        return uncertainty_weights(self.log_vars)

    def loss(self, errors: jax.Array, *, detach_errors: bool = False) -> jax.Array:
        return heteroscedastic_loss(errors, self.log_vars, detach_errors=detach_errors)
