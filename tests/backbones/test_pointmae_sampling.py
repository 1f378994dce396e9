"""FPS and KNN in JAX against literal NumPy models of the CUDA kernels, exact ties included.

The FPS reference simulates pointnet2_ops' kernel thread by thread (strided
scans keeping the first maximum, then the pairwise tree reduction that keeps
the lower slot on ties); the KNN reference is a stable argsort of float32
squared distances (KNN_CUDA's insertion sort). See notes/pointcloud.md section 3.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow_ad.backbones.pointmae import farthest_point_sample, knn


def fps_reference(pts, m, threads=None):
    pts = np.asarray(pts, np.float32)
    n = len(pts)
    t_count = threads or max(min(1 << int(math.log2(n)), 512), 1)
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    mag = (x * x + y * y) + z * z
    temp = np.full(n, 1e10, np.float32)
    out = [0]
    for _ in range(1, m):
        p = pts[out[-1]]
        best = np.full(t_count, -1.0, np.float32)
        besti = np.zeros(t_count, np.int64)
        for t in range(t_count):
            for k in range(t, n, t_count):
                if mag[k] <= np.float32(1e-3):
                    continue
                dx, dy, dz = x[k] - p[0], y[k] - p[1], z[k] - p[2]
                d = (dx * dx + dy * dy) + dz * dz
                d2 = min(d, temp[k])
                temp[k] = d2
                if d2 > best[t]:
                    best[t], besti[t] = d2, k
        width = t_count
        while width > 1:
            half = width // 2
            for t in range(half):
                if best[t + half] > best[t]:
                    best[t], besti[t] = best[t + half], besti[t + half]
            width = half
        out.append(int(besti[0]))
    return np.array(out)


def knn_reference(ref, query, k):
    ref, query = np.asarray(ref, np.float32), np.asarray(query, np.float32)
    d = np.zeros((len(query), len(ref)), np.float32)
    for c in range(3):
        diff = query[:, None, c] - ref[None, :, c]
        d = d + diff * diff
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def grid_cloud(n, seed):
    """Integer coordinates on a small lattice: many exactly equal distances, some duplicates."""
    rng = np.random.default_rng(seed)
    return rng.integers(-3, 4, size=(n, 3)).astype(np.float32)


_fps = jax.jit(farthest_point_sample, static_argnames=("num_samples", "tie_break", "num_threads"))
_knn = jax.jit(knn, static_argnames=("k",))


@pytest.mark.parametrize("n,m,seed", [(100, 24, 0), (700, 20, 1), (1100, 12, 2)])
def test_fps_ties_match_cuda_model(n, m, seed):
    pts = grid_cloud(n, seed)
    pts[0] = (1, 2, 3)  # start point valid
    pts[5] = 0  # near-origin points are skipped by the kernel
    ref = fps_reference(pts, m)
    got = np.asarray(_fps(jnp.asarray(pts), num_samples=m))
    np.testing.assert_array_equal(got, ref)


def test_fps_tie_rule_differs_from_lowest_index():
    """With 700 points (512 threads) the CUDA winner among ties is not the smallest index."""
    pts = grid_cloud(700, 1)
    pts[0] = (1, 2, 3)
    cuda = np.asarray(_fps(jnp.asarray(pts), num_samples=20))
    low = np.asarray(_fps(jnp.asarray(pts), num_samples=20, tie_break="lowest_index"))
    assert not np.array_equal(cuda, low)


def test_fps_random_continuous_and_padding_mask():
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(600, 3)).astype(np.float32) + 2
    ref = fps_reference(pts, 32)
    np.testing.assert_array_equal(np.asarray(_fps(jnp.asarray(pts), num_samples=32)), ref)
    padded = np.concatenate([pts, rng.normal(size=(200, 3)).astype(np.float32) * 50])
    valid = np.arange(800) < 600
    got = _fps(jnp.asarray(padded), num_samples=32, valid=jnp.asarray(valid), num_threads=512)
    np.testing.assert_array_equal(np.asarray(got), ref)


@pytest.mark.parametrize("seed", [0, 1])
def test_knn_ties_match_stable_sort(seed):
    pts = grid_cloud(300, seed)
    query = pts[::7]
    got = np.asarray(_knn(jnp.asarray(pts), jnp.asarray(query), k=40))
    np.testing.assert_array_equal(got, knn_reference(pts, query, 40))


def test_knn_padding_mask():
    rng = np.random.default_rng(5)
    pts = rng.normal(size=(200, 3)).astype(np.float32)
    pad = np.concatenate([pts, np.zeros((56, 3), np.float32)])
    valid = np.arange(256) < 200
    got = np.asarray(_knn(jnp.asarray(pad), jnp.asarray(pts[:10]), k=16, valid=jnp.asarray(valid)))
    np.testing.assert_array_equal(got, knn_reference(pts, pts[:10], 16))
