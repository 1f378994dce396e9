"""Point-cloud preprocessing (jaxflow_ad/data/pointcloud.py): M3DM's plane removal and DBSCAN cleaning, AST's
depth branch, and the two resizes, against scenes with a known answer and rules written out by hand
(pointcloud.md section 4, madflow-brief.md sections 1 and 7)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxflow_ad.data import pointcloud as pc


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only copy: any in-place write by the function under test raises."""
    a = np.array(a)
    a.flags.writeable = False
    return a


def _angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(abs(u @ v) / np.linalg.norm(u) / np.linalg.norm(v), -1, 1))))


def _tilted_scene(seed: int = 0, h: int = 96, w: int = 128, outliers: float = 0.2):
    """An organised cloud: a plane z = 0.4 + a x + b y (tilted 4 and -2.5 degrees), a 30 mm box in the middle,
    z noise 0.3 mm, ``outliers`` of the pixels replaced by uniform points mostly in front of the plane (z 0.33 to
    0.43 m), a few missing (zero and NaN) points.

    Returns the cloud, the masks of the box and of the plane points (neither replaced nor missing), and the true
    unit normal and offset, signed so the normal faces the camera at the origin (offset > 0)."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:h, :w]
    x, y = (c - w / 2) * 1e-3, (r - h / 2) * 1e-3
    a, b, z0 = np.tan(np.radians(4.0)), np.tan(np.radians(-2.5)), 0.4
    box = (abs(r - h / 2) < h / 5) & (abs(c - w / 2) < w / 5)
    z = z0 + a * x + b * y - 0.03 * box + rng.normal(0, 3e-4, (h, w))
    xyz = np.stack([x, y, z], -1)
    out = rng.random((h, w)) < outliers
    n_out = int(out.sum())
    xyz[out] = np.stack(
        [rng.uniform(x.min(), x.max(), n_out), rng.uniform(y.min(), y.max(), n_out), rng.uniform(0.33, 0.43, n_out)], -1
    )
    missing = rng.random((h, w)) < 0.01
    xyz[missing] = 0
    xyz[missing & (rng.random((h, w)) < 0.5)] = np.nan
    normal = np.array([a, b, -1.0])
    k = np.linalg.norm(normal)
    keep = ~out & ~missing
    return xyz.astype(np.float32), box & keep, ~box & keep, normal / k, z0 / k


# --------------------------------------------------------------------------------------------------------------------
# valid points, nearest resize


def test_valid_points_nan_and_zeros():
    xyz = np.zeros((2, 3, 3), np.float32)
    xyz[0, 0] = (0.1, 0.2, 0.4)
    xyz[0, 1] = (0.0, 0.0, 0.4)  # one or two exact-zero coordinates: a real point
    xyz[0, 2] = (np.nan, 0.2, 0.4)
    xyz[1, 0] = (0.1, np.inf, 0.4)
    xyz[1, 2] = (0.1, 0.0, 0.0)
    frozen = _frozen(xyz)
    np.testing.assert_array_equal(pc.valid_points(frozen), [[True, True, False], [False, False, True]])


def test_resize_nearest_takes_floor_of_i_h_over_out_non_square():
    h, w = 7, 11
    src = _frozen(np.arange(h * w * 2).reshape(h, w, 2))
    out = pc.resize_nearest(src, (3, 4))
    rows, cols = [0, 2, 4], [0, 2, 5, 8]  # floor(i * 7 / 3), floor(j * 11 / 4), worked out by hand
    np.testing.assert_array_equal(out, src[np.ix_(rows, cols)])
    assert out.dtype == src.dtype
    # MVTec-sized, upsampling and the square shorthand, against exact integer floor((i * H) // out)
    for (h, w), size in [((800, 900), (224, 224)), ((5, 3), (12, 7)), ((1000, 400), 56)]:
        out_h, out_w = (size, size) if np.isscalar(size) else size
        grid = np.stack(np.mgrid[:h, :w], -1)
        got = pc.resize_nearest(grid, size)
        np.testing.assert_array_equal(got[:, 0, 0], np.arange(out_h) * h // out_h)
        np.testing.assert_array_equal(got[0, :, 1], np.arange(out_w) * w // out_w)


def test_resize_nearest_matches_torch_float32_scale_at_600_to_224():
    """torch's ``nearest_idx`` is ``floorf(i * (float)H / out)``; at tire's width 600 -> 224 (and 400 -> 192) a
    float64 or exact-integer product picks the next column at i = 84 and 168 (torch's float32 lands just below)."""
    i = np.arange(224, dtype=np.float32)
    torch_rule = np.floor(i * (np.float32(600) / np.float32(224))).astype(np.int64)
    np.testing.assert_array_equal(pc.resize_nearest(np.arange(600)[:, None], (224, 1))[:, 0], torch_rule)


# --------------------------------------------------------------------------------------------------------------------
# RANSAC plane, plane removal


def test_border_band():
    band = pc.border_band((30, 25, 3), width=4)
    expected = np.ones((30, 25), bool)
    expected[4:26, 4:21] = False
    np.testing.assert_array_equal(band, expected)


def test_ransac_recovers_a_tilted_plane_through_a_box_and_outliers():
    xyz, box, plane, normal, offset = _tilted_scene()
    points = _frozen(xyz[pc.valid_points(xyz)])
    fitted = pc.fit_plane_ransac(points, seed=0)
    again = pc.fit_plane_ransac(points, seed=0)
    np.testing.assert_array_equal(fitted[0], again[0])  # deterministic for a seed
    assert fitted[1] == again[1]
    for seed in (0, 1, 2):
        n, d = pc.fit_plane_ransac(points, seed=seed)
        assert abs(np.linalg.norm(n) - 1) < 1e-12
        assert _angle_deg(n, normal) < 0.5 and abs(d - offset) < 5e-4, (seed, _angle_deg(n, normal), d - offset)
        assert n @ normal > 0  # signed to face the camera, like the truth
    # the border-band fit used by remove_plane is as good
    n, d = pc.border_plane(_frozen(xyz), seed=0)
    assert _angle_deg(n, normal) < 0.5 and abs(d - offset) < 5e-4
    # without the random hypotheses, a least-squares plane through everything refitted on its inliers misses
    p = points.astype(np.float64)
    n = np.linalg.svd(p - p.mean(0), full_matrices=False)[2][-1]
    inliers = p[np.abs((p - p.mean(0)) @ n) < 0.004]
    n = np.linalg.svd(inliers - inliers.mean(0), full_matrices=False)[2][-1]
    n, d = (n, -n @ inliers.mean(0)) if n @ inliers.mean(0) < 0 else (-n, n @ inliers.mean(0))
    assert _angle_deg(n, normal) > 0.5 or abs(d - offset) > 5e-4, (_angle_deg(n, normal), d - offset)


def test_ransac_three_point_samples_and_errors():
    xyz, _, _, normal, offset = _tilted_scene(seed=3)
    n, d = pc.fit_plane_ransac(xyz[pc.valid_points(xyz)], n_samples=3, iterations=300, seed=5)
    assert _angle_deg(n, normal) < 0.5 and abs(d - offset) < 5e-4
    with pytest.raises(ValueError, match="at least 3"):
        pc.fit_plane_ransac(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        pc.fit_plane_ransac(np.full((5, 3), np.nan))


def test_remove_plane_zeroes_the_plane_and_keeps_the_object():
    xyz, box, plane, normal, offset = _tilted_scene()
    frozen = _frozen(xyz)
    out = pc.remove_plane(frozen, seed=0)
    assert out.shape == xyz.shape and out.dtype == np.float32
    kept = pc.valid_points(out)
    assert kept[box].mean() >= 0.99
    assert kept[plane].mean() < 0.001
    np.testing.assert_array_equal(out[kept], xyz[kept])  # survivors untouched
    assert np.all(out[~kept] == 0) and not np.isnan(out).any()  # missing and removed points are exact zeros
    np.testing.assert_array_equal(pc.remove_plane(frozen, seed=0), out)
    other = pc.remove_plane(frozen, seed=7)
    assert (pc.valid_points(other) != kept).mean() < 0.002  # another seed: nearly the same points
    np.testing.assert_array_equal(frozen, xyz)  # (read-only, and NaN compare as equal here)


def test_remove_plane_threshold_is_perpendicular_distance():
    """Patches 4.5 mm and 5.5 mm off a tilted plane (along its normal): only the first is within 5 mm."""
    r, c = np.mgrid[:40, :40]
    normal = np.array([0.1, -0.05, -1.0]) / np.linalg.norm([0.1, -0.05, -1.0])
    x, y = (c - 20) * 1e-3, (r - 20) * 1e-3
    xyz = np.stack([x, y, 0.4 + 0.1 * x - 0.05 * y], -1)  # n . p + d = 0 with d = 0.4 |n_z|
    near, far = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    near[15:20, 15:25], far[20:25, 15:25] = True, True
    xyz[near] += 0.0045 * normal  # towards the camera
    xyz[far] += 0.0055 * normal
    frozen = _frozen(xyz.astype(np.float32))
    np.testing.assert_array_equal(pc.valid_points(pc.remove_plane(frozen, iterations=50)), far)
    np.testing.assert_array_equal(pc.valid_points(pc.remove_plane(frozen, threshold=0.004, iterations=50)), near | far)


def test_remove_plane_needs_three_band_points():
    xyz, *_ = _tilted_scene(h=40, w=40)
    xyz = xyz.copy()
    xyz[pc.border_band(xyz.shape, 10)] = 0
    xyz[0, 0] = xyz[0, 1] = (0.0, 0.0, 0.4)
    with pytest.raises(ValueError, match="border band.*2 valid points"):
        pc.remove_plane(xyz)


# --------------------------------------------------------------------------------------------------------------------
# DBSCAN


def _grid(rows: slice, cols: slice, z: float, shape=(60, 60), spacing=1e-3):
    """Points on a 1 mm grid (x, y from the pixel) at depth z inside ``rows x cols``, zero elsewhere."""
    r, c = np.mgrid[: shape[0], : shape[1]]
    xyz = np.stack([c * spacing, r * spacing, np.full(shape, z)], -1)
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return np.where(mask[..., None], xyz, 0).astype(np.float32), mask


def test_largest_cluster_drops_a_floating_speck_and_scattered_noise():
    obj, obj_mask = _grid(slice(10, 40), slice(10, 40), 0.40)
    speck, speck_mask = _grid(slice(50, 56), slice(50, 57), 0.30)  # 42 points, 10 cm nearer the camera
    xyz = obj + speck
    noise_mask = np.zeros_like(obj_mask)
    noise_mask[2, ::8] = True  # isolated points 8 mm apart: DBSCAN noise
    xyz[noise_mask] = (0.01, 0.002, 0.35)
    xyz[noise_mask, 0] = np.arange(noise_mask.sum()) * 0.008
    xyz[45, 45] = (np.nan, 0.1, 0.2)
    frozen = _frozen(xyz)
    out = pc.largest_cluster(frozen)
    np.testing.assert_array_equal(pc.valid_points(out), obj_mask)
    np.testing.assert_array_equal(out[obj_mask], xyz[obj_mask])
    assert np.all(out[~obj_mask] == 0)
    # the speck on its own is a cluster (>= 30 core-reachable points), so it is kept when alone
    np.testing.assert_array_equal(pc.valid_points(pc.largest_cluster(speck)), speck_mask)


def test_largest_cluster_without_any_cluster_leaves_the_cloud_unchanged():
    xyz = np.zeros((20, 20, 3), np.float32)
    sparse = np.zeros((20, 20), bool)
    sparse[::3, ::3] = True
    r, c = np.nonzero(sparse)
    xyz[sparse] = np.stack([c * 0.01, r * 0.01, np.full(r.size, 0.4)], -1)  # 30 mm apart > eps: all noise
    xyz[1, 1] = (np.nan, 0, 0.4)
    out = pc.largest_cluster(_frozen(xyz))
    np.testing.assert_array_equal(pc.valid_points(out), sparse)
    np.testing.assert_array_equal(out[sparse], xyz[sparse])
    assert np.all(out[~sparse] == 0)
    assert not pc.valid_points(pc.largest_cluster(np.zeros((4, 4, 3), np.float32))).any()


def test_largest_cluster_noise_rule_of_m3dm():
    """More noise points than the only cluster has: kept cluster by default, kept noise with M3DM's rule."""
    xyz, blob = _grid(slice(0, 6), slice(0, 6), 0.4, shape=(40, 40))  # 36 points
    sparse = np.zeros((40, 40), bool)
    sparse[10::3, ::3] = True  # 140 isolated points
    r, c = np.nonzero(sparse)
    xyz[sparse] = np.stack([c * 0.01, r * 0.01, np.full(r.size, 0.4)], -1)
    np.testing.assert_array_equal(pc.valid_points(pc.largest_cluster(xyz, min_samples=20)), blob)
    np.testing.assert_array_equal(pc.valid_points(pc.largest_cluster(xyz, min_samples=20, noise_can_win=True)), sparse)


def test_clean_cloud_keeps_the_object_only():
    xyz, box, plane, _, _ = _tilted_scene()
    frozen = _frozen(xyz)
    out = pc.clean_cloud(frozen, seed=0)
    kept = pc.valid_points(out)
    assert kept[box].mean() >= 0.99
    assert kept[~box].mean() < 0.01  # plane and scattered outliers gone
    np.testing.assert_array_equal(pc.clean_cloud(frozen, plane=False, cluster=False)[kept], xyz[kept])
    np.testing.assert_array_equal(pc.clean_cloud(frozen, cluster=False, seed=0), pc.remove_plane(frozen, seed=0))


# --------------------------------------------------------------------------------------------------------------------
# AST / MADFlow depth branch


def _fill_gaps_literal(img: np.ndarray, iterations: int) -> np.ndarray:
    """The rule as pointcloud.md states it, pixel by pixel with Python slices (slow, float64)."""
    img = img.astype(np.float64)
    for _ in range(iterations):
        new = img.copy()
        for x, y in zip(*np.nonzero(img == 0)):
            window = img[x - 1 : x + 2, y - 1 : y + 2]  # start -1 at the top/left edge: an empty slice
            count = np.count_nonzero(window > 0)
            if count >= 1:
                new[x, y] = window.sum() / count
        img = new
    return img


def test_fill_gaps_edge_rule_by_hand():
    z = np.arange(1, 26, dtype=np.float32).reshape(5, 5)
    for r, c in [(0, 2), (2, 0), (3, 0), (2, 2), (4, 4), (4, 1)]:
        z[r, c] = 0
    out = pc.fill_gaps(_frozen(z), iterations=1)
    assert out[0, 2] == 0 and out[2, 0] == 0 and out[3, 0] == 0  # row 0 and column 0 are never filled
    assert out[2, 2] == pytest.approx((7 + 8 + 9 + 12 + 14 + 17 + 18 + 19) / 8)
    assert out[4, 4] == pytest.approx((19 + 20 + 24) / 3)  # clipped 2x2 window at the last row and column
    assert out[4, 1] == pytest.approx((17 + 18 + 21 + 23) / 4)  # the zeros at (3, 0) and (4, 1) do not count
    out_mask = np.ones_like(z, bool)
    out_mask[[2, 4, 4], [2, 4, 1]] = False
    np.testing.assert_array_equal(out[out_mask], z[out_mask])
    assert out.dtype == np.float32


def test_fill_gaps_passes_read_the_previous_image():
    z = np.random.default_rng(0).uniform(0.3, 0.5, (9, 9)).astype(np.float32)
    z[3:6, 3:6] = 0  # the centre sees only zeros in pass 1: an in-place raster update would fill it at once
    assert pc.fill_gaps(z, 1)[4, 4] == 0
    assert pc.fill_gaps(z, 2)[4, 4] > 0
    rng = np.random.default_rng(1)
    z = np.where(rng.random((23, 17)) < 0.45, 0, rng.uniform(0.3, 0.5, (23, 17))).astype(np.float32)
    z[0, 5] = z[7, 0] = np.nan
    for n in (1, 3):
        expected = _fill_gaps_literal(np.nan_to_num(z, nan=0.0), n)
        np.testing.assert_allclose(pc.fill_gaps(_frozen(z), n), expected, rtol=1e-6)


def test_dilate_grows_four_up_left_and_three_down_right():
    mask = np.zeros((20, 22), bool)
    mask[10, 11] = True
    expected = np.zeros_like(mask)
    expected[10 - 4 : 10 + 3 + 1, 11 - 4 : 11 + 3 + 1] = True
    np.testing.assert_array_equal(pc.dilate(_frozen(mask)), expected)
    corner = np.zeros((20, 22), bool)
    corner[0, 21] = True  # clipped at the edges
    expected = np.zeros_like(corner)
    expected[0:4, 17:22] = True
    np.testing.assert_array_equal(pc.dilate(corner, 8), expected)
    expected = np.zeros_like(mask)
    expected[9:12, 10:13] = True
    np.testing.assert_array_equal(pc.dilate(mask, 3), expected)


def test_largest_component_four_versus_eight_connectivity():
    mask = np.zeros((12, 12), np.uint8)
    mask[0:3, 0:3] = 1  # A: 9 pixels
    mask[3:5, 3:7] = 1  # B: 8 pixels touching A only at a corner
    mask[8:12, 8:11] = 1  # C: 12 pixels
    frozen = _frozen(mask)
    only_c = np.zeros((12, 12), bool)
    only_c[8:12, 8:11] = True
    np.testing.assert_array_equal(pc.largest_component(frozen), only_c)
    merged = pc.largest_component(frozen, connectivity=8)
    assert merged.sum() == 17 and merged[0, 0] and merged[4, 6] and not merged[10, 10]
    assert not pc.largest_component(np.zeros((4, 4))).any()


def test_corner_plane_background():
    h, w = 9, 13
    const = np.full((h, w), 0.4, np.float32)
    np.testing.assert_allclose(pc.corner_plane_background(_frozen(const)), 0.4, rtol=1e-6)
    r, c = np.mgrid[:h, :w].astype(np.float64)
    bilinear = 0.4 + 1e-3 * r - 2e-3 * c + 1e-4 * r * c  # exactly bilinear in the corner values it is given
    z = bilinear.copy()
    for rr, cc in [(0, 0), (h - 1, 0), (0, w - 1), (h - 1, w - 1)]:  # the 2x2 corner means: make them equal z there
        block_r = slice(rr, rr + 2) if rr == 0 else slice(rr - 1, rr + 1)
        block_c = slice(cc, cc + 2) if cc == 0 else slice(cc - 1, cc + 1)
        z[block_r, block_c] = bilinear[rr, cc]
    np.testing.assert_allclose(pc.corner_plane_background(z), bilinear, rtol=0, atol=1e-12)
    # on a tilted plane the corner means are the 2x2 block means (here with a missing pixel), placed at the corners
    plane = 0.4 + 1e-3 * r - 2e-3 * c
    plane[0, 1] = 0
    bg = pc.corner_plane_background(plane)
    c00 = (plane[0, 0] + plane[1, 0] + plane[1, 1]) / 3
    c11 = plane[-2:, -2:].mean()
    assert bg[0, 0] == pytest.approx(c00, abs=1e-12) and bg[-1, -1] == pytest.approx(c11, abs=1e-12)
    assert bg[4, 6] == pytest.approx((c00 + plane[-2:, :2].mean() + plane[:2, -2:].mean() + c11) / 4, abs=1e-12)
    assert np.abs(bg - plane)[1:, :].max() <= 0.5 * (1e-3 + 2e-3) + 1e-12  # off by half a pixel's slope at most
    plane[-2:, :2] = 0
    with pytest.raises(ValueError, match="bottom-left 2x2 corner has no positive depth"):
        pc.corner_plane_background(plane)


def test_foreground_from_depth_threshold():
    bg = np.full((1, 6), 0.4)
    z = np.array([[0.4 - 0.0075, 0.4 - 0.0065, 0.4 + 0.0075, 0.4, 0.0, np.nan]], np.float32)
    np.testing.assert_array_equal(pc.foreground_from_depth(_frozen(z), bg), [[True, False, True, False, False, False]])
    np.testing.assert_array_equal(pc.foreground_from_depth(z, bg, 0.006), [[True, True, True, False, False, False]])


def test_depth_branch_by_hand():
    h, w = 12, 14
    z = np.full((h, w), 0.5)
    z[3:7, 4:9] = np.linspace(0.48, 0.49, 20).reshape(4, 5)  # object 1-2 cm nearer, 20 pixels
    z[4, 6] = 0  # a hole the fills close
    z[9, 11] = 0.47  # a one-pixel speck, not in a corner block
    r, c = np.mgrid[:h, :w]
    xyz = np.stack([c * 1e-3, r * 1e-3, z], -1).astype(np.float32)
    xyz[4, 6] = 0
    xyz[0, 7] = (np.nan, 0, 0.5)  # missing on row 0: never filled, stays out of the foreground
    frozen = _frozen(xyz)
    depth, fg = pc.depth_branch(frozen)
    obj = np.zeros((h, w), bool)
    obj[3:7, 4:9] = True
    np.testing.assert_array_equal(fg, obj)
    zf = xyz[..., 2].astype(np.float64)
    zf[0, 7] = 0
    zf[4, 6] = np.mean([xyz[rr, cc, 2] for rr in (3, 4, 5) for cc in (5, 6, 7) if (rr, cc) != (4, 6)])
    m = zf[obj].mean()
    expected = (obj * zf + (1 - obj) * m - m) * 100  # the AST / madflow-brief formula
    np.testing.assert_allclose(depth, expected, atol=1e-5)
    assert depth.dtype == np.float32 and fg.dtype == bool and depth[~obj].max() == 0
    depth1, _ = pc.depth_branch(frozen, scale=1.0)
    np.testing.assert_allclose(depth1, expected / 100, atol=1e-7)
    _, fg_ast = pc.depth_branch(frozen, largest=False)  # AST: the speck stays
    np.testing.assert_array_equal(np.nonzero(fg_ast & ~obj), ([9], [11]))
    empty_depth, empty_fg = pc.depth_branch(np.stack([c * 1e-3, r * 1e-3, np.full((h, w), 0.5)], -1))
    assert not empty_fg.any() and np.all(empty_depth == 0)


def test_foreground_at_is_torch_bilinear_by_hand():
    fg = np.zeros((16, 16), bool)
    fg[3, 3] = True  # 16 -> 2: output (0, 0) averages source rows and columns 3 and 4
    out = pc.foreground_at(_frozen(fg), 2)
    np.testing.assert_array_equal(out, [[0.25, 0], [0, 0]])
    assert out.dtype == np.float32
    fg = np.zeros((16, 16), bool)
    fg[3:5, 8:13] = True
    np.testing.assert_array_equal(pc.foreground_at(fg, 2), [[0, 1], [0, 0]])
    fg = np.zeros((16, 16), bool)
    fg[2, 5] = True  # outside every sampled pair: a thin detail is lost, as in torch
    assert pc.foreground_at(fg, 2).max() == 0
    # upsampling 2 -> 3, non-square: src = (j + 0.5) * 2 / 3 - 0.5 = -1/6 (clamped to 0), 1/2, 7/6 (clamped to 1)
    a = np.array([[0.0, 6.0], [12.0, 24.0]])
    rows = np.array([a[0], 0.5 * a[0] + 0.5 * a[1], a[1]])
    np.testing.assert_allclose(pc.resize_bilinear(a, (3, 2)), rows)
    np.testing.assert_allclose(
        pc.resize_bilinear(a, (2, 3)), np.stack([a[:, 0], 0.5 * a[:, 0] + 0.5 * a[:, 1], a[:, 1]], 1)
    )
    stacked = pc.resize_bilinear(np.stack([a, 2 * a], -1), (3, 2))
    np.testing.assert_allclose(stacked[..., 1], 2 * rows)


@pytest.mark.torch
def test_resize_bilinear_equals_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).random((37, 53))
    for size in [(24, 24), (5, 80), (192, 100)]:
        ref = torch.nn.functional.interpolate(torch.tensor(x)[None, None], size=size, mode="bilinear")[0, 0].numpy()
        np.testing.assert_allclose(pc.resize_bilinear(x, size), ref, atol=1e-6)
