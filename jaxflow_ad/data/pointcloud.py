"""Organised point clouds: validity, resizing, background-plane removal, clustering and the
AST/MADFlow depth branch, as pure host-side NumPy functions.

An organised cloud is float32 [H, W, 3] in metres, aligned pixel for pixel with its RGB image
(MVTec 3D-AD's ``xyz/*.tiff``). A point is missing when it is (0, 0, 0) or has a NaN; every
function here returns missing points as exact zeros and never modifies its input.

Two preprocessing paths (pointcloud.md section 4, madflow-brief.md section 1):

* the point branch (M3DM ``utils/preprocessing.py``, identical in BTF): :func:`remove_plane`
  (RANSAC plane on the 10 px border band, points within 5 mm zeroed), then
  :func:`largest_cluster` (DBSCAN, largest cluster kept); :func:`clean_cloud` does both.
  M3DM's pad-to-a-square-multiple-of-100 step is left out (madflow-brief step 2);
* the depth branch (AST ``preprocess.py`` and its ``get_3D`` loader, as MADFlow uses them):
  :func:`fill_gaps`, :func:`corner_plane_background`, :func:`foreground_from_depth`,
  :func:`largest_component` (MADFlow only), then the centred depth; :func:`depth_branch` composes
  them. Resizing to 8S, :func:`dilate` and :func:`foreground_at` are the caller's later steps.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "border_band",
    "border_plane",
    "clean_cloud",
    "corner_plane_background",
    "depth_branch",
    "dilate",
    "fill_gaps",
    "fit_plane_ransac",
    "foreground_at",
    "foreground_from_depth",
    "largest_cluster",
    "largest_component",
    "remove_plane",
    "resize_bilinear",
    "resize_nearest",
    "valid_points",
]


def valid_points(xyz: np.ndarray) -> np.ndarray:
    """bool [H, W]: the points that are present, i.e. finite and not all-zero.

    M3DM keeps a point only if x, y and z are all non-zero (pointcloud.md section 2); that is the
    stricter rule used when a cloud is turned into a point set for Point-MAE, not here. A point
    with one exact-zero coordinate is a real measurement in an organised cloud.
    """
    xyz = np.asarray(xyz)
    return np.all(np.isfinite(xyz), axis=-1) & np.any(xyz != 0, axis=-1)


def resize_nearest(array: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Legacy nearest-neighbour resize of an organised map (cloud, depth or mask), as torch's
    ``F.interpolate(mode="nearest")`` that M3DM and MADFlow use on clouds: output row ``i`` takes
    source row ``floor(i * (H / out_h))`` computed in float32 as torch does, likewise for columns.
    Unlike a bilinear resize it never mixes a missing point with a present one.

    Args:
      array: [H, W, ...] any dtype.
      size: output side, or ``(out_h, out_w)``.

    Returns:
      [out_h, out_w, ...], the same dtype.
    """
    out_h, out_w = (size, size) if np.isscalar(size) else size
    h, w = np.shape(array)[:2]
    # torch's nearest_idx: floorf(i * (float)H / out), the scale and the product in float32. Exact
    # integer arithmetic (i * H // out) differs from it at e.g. 600 -> 224 (tire's width): columns 84, 168.
    rows = np.floor(np.arange(out_h, dtype=np.float32) * (np.float32(h) / np.float32(out_h))).astype(np.int64)
    cols = np.floor(np.arange(out_w, dtype=np.float32) * (np.float32(w) / np.float32(out_w))).astype(np.int64)
    return np.asarray(array)[rows][:, cols]


# --------------------------------------------------------------------------------------------
# Point branch: background plane and clusters (M3DM utils/preprocessing.py)
# --------------------------------------------------------------------------------------------


def _cloud_copy(xyz: np.ndarray) -> np.ndarray:
    """A new [H, W, 3] float array (float32 unless the input is another float type) with every
    missing point set to exact zeros."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"expected an organised cloud of shape [H, W, 3], got {xyz.shape}")
    dtype = xyz.dtype if np.issubdtype(xyz.dtype, np.floating) else np.float32
    return np.where(valid_points(xyz)[..., None], xyz, 0).astype(dtype, copy=False)


def border_band(shape: tuple[int, ...], width: int = 10) -> np.ndarray:
    """bool [H, W]: the outer band ``width`` pixels wide (rows ``:width`` and ``-width:``, columns
    ``:width`` and ``-width:``), where M3DM ``utils/preprocessing.py`` fits the background plane.

    ``shape`` may be a cloud's full shape; only ``shape[:2]`` is used. M3DM concatenates the four
    strips, so its corner points count twice in the fit; a mask counts each point once.
    """
    h, w = shape[:2]
    if width < 1:
        raise ValueError(f"border_band: width must be >= 1, got {width}")
    band = np.zeros((h, w), dtype=bool)
    band[:width] = band[-width:] = True
    band[:, :width] = band[:, -width:] = True
    return band


def _orient(normal: np.ndarray, offset: float) -> tuple[np.ndarray, float]:
    """Unit normal and offset, signed so that the normal faces the sensor at the origin
    (``offset > 0``); for a plane through the origin its largest component is made positive."""
    norm = np.linalg.norm(normal)
    normal, offset = normal / norm, offset / norm
    flip = offset < 0 if offset != 0 else normal[np.argmax(np.abs(normal))] < 0
    return (-normal, -offset) if flip else (normal, offset)


def _lstsq_plane(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Total-least-squares plane through [N, 3] points: the centroid and the right singular
    vector of the smallest singular value."""
    centroid = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centroid, full_matrices=False)
    normal = vt[-1]
    return normal, -float(normal @ centroid)


def fit_plane_ransac(
    points: np.ndarray,
    *,
    threshold: float = 0.004,
    n_samples: int = 50,
    iterations: int = 1000,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Seeded RANSAC plane ``n . p + d = 0`` through [N, 3] points, refitted on its inliers.

    As Open3D's ``segment_plane`` that M3DM ``utils/preprocessing.py`` calls with
    ``distance_threshold=0.004, ransac_n=50, num_iterations=1000`` (pointcloud.md section 4):

    * each of ``iterations`` hypotheses is the least-squares plane through ``n_samples`` distinct
      random points (a plain 3-point plane when ``n_samples=3``);
    * a point is an inlier when its distance is ``< threshold``; the best hypothesis has the most
      inliers, ties broken by the smaller inlier RMS distance, then by the earlier iteration;
    * the returned plane is the least-squares (SVD) refit on the best hypothesis's inliers.

    Differences from M3DM: the sampling is seeded (``np.random.default_rng(seed)``), so the result
    is deterministic, where M3DM's is not; Open3D's early stop once enough iterations are
    statistically sufficient is not reproduced (with 50-point samples it almost never triggers);
    ``n_samples`` is clipped to the number of points. Arithmetic is float64.

    Args:
      points: [N, 3] finite points, N >= 3.
      threshold: inlier distance, metres.
      n_samples: points per hypothesis (Open3D's ``ransac_n``).
      iterations: number of hypotheses.
      seed: seed of the sampler.

    Returns:
      ``(normal, offset)``: the unit normal [3] (float64) facing the sensor at the origin, i.e.
      ``offset > 0`` (largest component positive if the plane passes through the origin), and the
      offset ``d`` in metres.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"fit_plane_ransac: expected points of shape [N, 3], got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("fit_plane_ransac: points must be finite (drop missing points first)")
    n = len(pts)
    if n < 3:
        raise ValueError(f"fit_plane_ransac: need at least 3 points, got {n}")
    k = max(3, min(int(n_samples), n))
    mean = pts.mean(axis=0)
    pts = pts - mean  # conditioning: planes are fitted around the data's mean, then shifted back

    rng = np.random.default_rng(seed)
    sample = np.stack([rng.choice(n, size=k, replace=False) for _ in range(iterations)])
    groups = pts[sample]  # [I, k, 3]
    centroids = groups.mean(axis=1)
    centred = groups - centroids[:, None]
    _, vectors = np.linalg.eigh(np.einsum("ikc,ike->ice", centred, centred))
    normals = vectors[:, :, 0]  # eigenvector of the smallest eigenvalue of each scatter matrix
    offsets = -np.einsum("ic,ic->i", normals, centroids)

    counts = np.empty(iterations, dtype=np.int64)
    rmse = np.empty(iterations)
    chunk = max(1, 2**22 // n)
    for start in range(0, iterations, chunk):
        stop = min(start + chunk, iterations)
        dist = np.abs(pts @ normals[start:stop].T + offsets[start:stop])  # [N, chunk]
        inlier = dist < threshold
        counts[start:stop] = inlier.sum(axis=0)
        sq = np.where(inlier, dist * dist, 0.0).sum(axis=0)
        rmse[start:stop] = np.sqrt(sq / np.maximum(counts[start:stop], 1))
    best = np.lexsort((np.arange(iterations), rmse, -counts))[0]

    inliers = np.abs(pts @ normals[best] + offsets[best]) < threshold
    if inliers.sum() < 3:
        raise ValueError(f"fit_plane_ransac: no plane has 3 points within {threshold} m")
    normal, offset = _lstsq_plane(pts[inliers])
    return _orient(normal, offset - float(normal @ mean))


def border_plane(
    xyz: np.ndarray,
    *,
    band: int = 10,
    threshold: float = 0.004,
    n_samples: int = 50,
    iterations: int = 1000,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """The background plane of an organised cloud: :func:`fit_plane_ransac` on the valid points of
    the ``band``-pixel border band (M3DM ``utils/preprocessing.py``; pointcloud.md section 4).

    Raises:
      ValueError: if the band holds fewer than 3 valid points.
    """
    cloud = _cloud_copy(xyz)
    select = border_band(cloud.shape, band) & valid_points(cloud)
    if select.sum() < 3:
        raise ValueError(
            f"plane removal: the {band}-pixel border band of this {cloud.shape[0]}x{cloud.shape[1]} cloud has "
            f"{int(select.sum())} valid points; at least 3 are needed to fit the background plane"
        )
    return fit_plane_ransac(cloud[select], threshold=threshold, n_samples=n_samples, iterations=iterations, seed=seed)


def remove_plane(
    xyz: np.ndarray,
    *,
    band: int = 10,
    threshold: float = 0.005,
    fit_threshold: float = 0.004,
    n_samples: int = 50,
    iterations: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Zero every point within ``threshold`` of the background plane (M3DM
    ``utils/preprocessing.py``: ``|[a, b, c, d] . [x, y, z, 1]| < 0.005``, pointcloud.md section 4).

    The plane is :func:`border_plane` (RANSAC with ``fit_threshold``, ``n_samples``,
    ``iterations`` and ``seed`` on the ``band``-pixel border band). M3DM also zeroes the RGB
    pixels; the caller does that with ``valid_points`` of the result if it wants to.

    Returns:
      A new [H, W, 3] cloud, plane and missing points set to exact zeros.

    Raises:
      ValueError: if the border band holds fewer than 3 valid points.
    """
    cloud = _cloud_copy(xyz)
    normal, offset = border_plane(
        cloud, band=band, threshold=fit_threshold, n_samples=n_samples, iterations=iterations, seed=seed
    )
    on_plane = np.abs(cloud.astype(np.float64) @ normal + offset) < threshold
    cloud[on_plane & valid_points(cloud)] = 0
    return cloud


def largest_cluster(
    xyz: np.ndarray,
    *,
    eps: float = 0.006,
    min_samples: int = 30,
    noise_can_win: bool = False,
) -> np.ndarray:
    """Keep only the largest DBSCAN cluster of the valid points; every other point is zeroed.

    M3DM ``utils/preprocessing.py`` runs Open3D ``cluster_dbscan(eps=0.006, min_points=30)`` on
    the non-zero points (pointcloud.md section 4); here ``sklearn.cluster.DBSCAN(eps,
    min_samples)``. Both count the point itself among its neighbours; sklearn's neighbourhood is
    ``distance <= eps``, Open3D's ``< eps`` (immaterial on real data). Equal-sized clusters: the
    one DBSCAN labels first (row-major order of its first point) wins.

    Choices:

    * DBSCAN noise (label -1) never wins by default. M3DM picks the most frequent label among all
      of them, noise included, so when scattered points outnumber the object it keeps the noise
      and drops the object; ``noise_can_win=True`` reproduces that.
    * No cluster at all (every point is noise, or the cloud is empty): the cloud is returned
      unchanged (missing points zeroed). Zeroing every point would destroy the sample; it is also
      what M3DM does, since its only label is then -1 and it keeps those points.

    Memory: sklearn materialises every point's eps-neighbourhood, N x (points within eps) indices.
    That grows with the point density: modest on a 224^2 cloud, but it can reach gigabytes on a
    dense full-resolution scan (about 1 mm spacing gives ~100 neighbours a point, 0.2 mm ~3000).

    Returns:
      A new [H, W, 3] cloud.
    """
    from sklearn.cluster import DBSCAN  # deferred: sklearn's import costs about a second

    cloud = _cloud_copy(xyz)
    valid = valid_points(cloud)
    if not valid.any():
        return cloud
    labels = DBSCAN(eps=eps, min_samples=min_samples).fit(cloud[valid].astype(np.float64)).labels_
    counts = np.bincount(labels + 1)  # counts[0] is noise
    if counts.size == 1:
        return cloud  # no cluster: see the docstring
    keep_label = int(np.argmax(counts[1:]))
    if noise_can_win and counts[0] > counts[keep_label + 1]:
        keep_label = -1
    keep = np.zeros_like(valid)
    keep[valid] = labels == keep_label
    cloud[~keep] = 0
    return cloud


def clean_cloud(
    xyz: np.ndarray,
    *,
    plane: bool = True,
    cluster: bool = True,
    seed: int = 0,
    band: int = 10,
    plane_threshold: float = 0.005,
    fit_threshold: float = 0.004,
    n_samples: int = 50,
    iterations: int = 1000,
    eps: float = 0.006,
    min_samples: int = 30,
) -> np.ndarray:
    """The point-branch cleaning of madflow-brief step 2, in M3DM's order: :func:`remove_plane`
    then :func:`largest_cluster` (M3DM ``utils/preprocessing.py``, without its pad to a square).

    Args:
      xyz: [H, W, 3] organised cloud, metres.
      plane: remove the background plane.
      cluster: keep only the largest DBSCAN cluster.
      seed: RANSAC seed.
      band, plane_threshold, fit_threshold, n_samples, iterations: see :func:`remove_plane`
        (``plane_threshold`` is its ``threshold``).
      eps, min_samples: see :func:`largest_cluster`.

    Returns:
      A new [H, W, 3] cloud, removed and missing points set to exact zeros.
    """
    cloud = _cloud_copy(xyz)
    if plane:
        cloud = remove_plane(
            cloud,
            band=band,
            threshold=plane_threshold,
            fit_threshold=fit_threshold,
            n_samples=n_samples,
            iterations=iterations,
            seed=seed,
        )
    if cluster:
        cloud = largest_cluster(cloud, eps=eps, min_samples=min_samples)
    return cloud


# --------------------------------------------------------------------------------------------
# Depth branch (AST preprocess.py and get_3D, as MADFlow uses them)
# --------------------------------------------------------------------------------------------


def _depth_copy(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z)
    if z.ndim != 2:
        raise ValueError(f"expected a depth map of shape [H, W], got {z.shape}")
    dtype = z.dtype if np.issubdtype(z.dtype, np.floating) else np.float32
    return np.where(np.isfinite(z), z, 0).astype(dtype, copy=False)


def fill_gaps(z: np.ndarray, iterations: int = 3) -> np.ndarray:
    """AST's gap filling (``preprocess.py``, ``n_fills=3``; pointcloud.md section 4, AST step 2).

    Each pass reads the previous pass's image (not updated in place). A zero pixel ``(x, y)`` gets
    ``sum(window) / count(window > 0)`` over the window ``img[x-1:x+2, y-1:y+2]`` when that count
    is at least 1. The window is a Python slice, so:

    * row 0 and column 0 are never filled (their slice starts at -1 and is empty);
    * the last row and column use the clipped 2-row / 2-column window.

    Non-finite values are treated as missing (zero) first. Sums are float64, stored in the input's
    float type (float32 for other types).

    Args:
      z: [H, W] depth, 0 = missing.
      iterations: number of passes.

    Returns:
      A new [H, W] map.
    """
    out = _depth_copy(z)
    h, w = out.shape
    for _ in range(iterations):
        padded = np.pad(out.astype(np.float64), 1)  # zeros outside = the clipped slice at the far edges
        total = np.zeros((h, w))
        count = np.zeros((h, w))
        for dr in range(3):
            for dc in range(3):
                window = padded[dr : dr + h, dc : dc + w]
                total += window
                count += window > 0
        fill = (out == 0) & (count > 0)
        fill[0, :] = False  # the empty slice at x = 0 ...
        fill[:, 0] = False  # ... and at y = 0
        if not fill.any():
            break
        out = out.copy()
        out[fill] = total[fill] / count[fill]
    return out


def corner_plane_background(z: np.ndarray, corner: int = 2) -> np.ndarray:
    """AST's background (``preprocess.py``; pointcloud.md section 4, AST step 3): the bilinear
    surface through the means of the positive depths in the four ``corner x corner`` corner blocks.

    With the corner means ``c00 = z[:2, :2]``, ``c10 = z[-2:, :2]``, ``c01 = z[:2, -2:]`` and
    ``c11 = z[-2:, -2:]`` placed at the corner pixels, and ``u = r / (H-1)``, ``v = c / (W-1)``::

        bg[r, c] = (c00 (1-u) + c10 u) (1-v) + (c01 (1-u) + c11 u) v

    This is exact on a constant or bilinear surface sampled at the corner pixels; on a tilted
    plane it is off by up to half a pixel's slope, because the 2x2 means belong to the block
    centres (as in AST).

    Raises:
      ValueError: if a corner block has no positive depth (AST would propagate NaN from 0/0), e.g.
        on a cloud that M3DM's preprocessing already plane-removed or padded.

    Returns:
      [H, W] float64.
    """
    z = _depth_copy(z)
    h, w = z.shape
    if h < 2 or w < 2 or not 1 <= corner <= min(h, w):
        raise ValueError(f"corner_plane_background: corner={corner} does not fit a {h}x{w} map (H, W >= 2)")
    blocks = {
        "top-left": z[:corner, :corner],
        "bottom-left": z[-corner:, :corner],
        "top-right": z[:corner, -corner:],
        "bottom-right": z[-corner:, -corner:],
    }
    means = {}
    for name, block in blocks.items():
        positive = block[block > 0].astype(np.float64)
        if positive.size == 0:
            raise ValueError(
                f"corner_plane_background: the {name} {corner}x{corner} corner has no positive depth, so the "
                "background plane is undefined (is the plane already removed, or the cloud padded?)"
            )
        means[name] = positive.mean()
    u = (np.arange(h) / (h - 1))[:, None]
    v = (np.arange(w) / (w - 1))[None, :]
    left = means["top-left"] * (1 - u) + means["bottom-left"] * u
    right = means["top-right"] * (1 - u) + means["bottom-right"] * u
    return left * (1 - v) + right * v


def foreground_from_depth(z: np.ndarray, background: np.ndarray, threshold: float = 0.007) -> np.ndarray:
    """bool [H, W]: ``|background - z| > threshold`` and ``z != 0`` (AST ``preprocess.py``,
    ``bg_thresh=7e-3``, i.e. 7 mm; pointcloud.md section 4, AST step 4). Non-finite z is missing."""
    z = _depth_copy(z).astype(np.float64)
    return (np.abs(np.asarray(background, dtype=np.float64) - z) > threshold) & (z != 0)


def largest_component(mask: np.ndarray, connectivity: int = 4) -> np.ndarray:
    """bool [H, W]: the largest connected component of ``mask`` (MADFlow ``preprocess.py``:
    OpenCV ``connectedComponentsWithStats(connectivity=4)``, largest non-background label;
    pointcloud.md section 4, AST step 5), with ``scipy.ndimage.label``.

    Equal-sized components: the first in row-major order wins. An empty mask stays empty (MADFlow
    returns the mask unchanged when there is no component).

    Args:
      mask: [H, W], non-zero = foreground.
      connectivity: 4 (edge neighbours, MADFlow) or 8 (edges and corners).
    """
    if connectivity not in (4, 8):
        raise ValueError(f"largest_component: connectivity must be 4 or 8, got {connectivity}")
    mask = np.asarray(mask) != 0
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def dilate(mask: np.ndarray, size: int = 8) -> np.ndarray:
    """bool [H, W]: ``scipy.ndimage.binary_dilation(mask, ones((size, size)))``, AST's foreground
    dilation (``dilate_size=8``, applied at 8S = 192 in AST; pointcloud.md section 4, AST step 8).

    With an even size the kernel is off-centre: a pixel grows ``size // 2`` pixels up and left and
    ``size // 2 - 1`` down and right (4 and 3 for 8). Outside the map counts as background.
    """
    mask = np.asarray(mask) != 0
    return ndimage.binary_dilation(mask, structure=np.ones((size, size), dtype=bool))


def depth_branch(
    xyz: np.ndarray,
    *,
    n_fills: int = 3,
    threshold: float = 0.007,
    corner: int = 2,
    largest: bool = True,
    connectivity: int = 4,
    scale: float = 100.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The AST / MADFlow depth input at full resolution (madflow-brief step 4; pointcloud.md
    section 4, AST steps 1-7, before any resizing).

    1. ``z = xyz[..., 2]``, missing points 0; :func:`fill_gaps` ``n_fills`` times;
    2. ``fg = foreground_from_depth(z, corner_plane_background(z), threshold)``;
    3. MADFlow only (``largest=True``): ``fg = largest_component(fg, connectivity)``;
    4. ``depth = (fg z + (1 - fg) m - m) * scale`` with ``m`` the mean of the filled z over the
       foreground: the background is 0, the foreground is centred. ``scale`` is 100 (centimetres,
       AST) except MADFlow's tire, which uses 1.

    With an empty foreground the depth is all zeros (AST's ``m`` would be 0/0 = NaN).

    The caller then resizes depth bilinearly to 8S (:func:`resize_bilinear`), resizes fg the same
    way and binarises it (``> 0``), :func:`dilate` s it at 8S and takes :func:`foreground_at` S.

    Args:
      xyz: [H, W, 3] organised cloud, metres (the raw cloud: the corners must hold background).
      n_fills, threshold, corner, connectivity: see the functions above.
      largest: keep the largest connected foreground component (MADFlow); False for AST.
      scale: depth multiplier.

    Returns:
      ``(depth, fg)``: float32 [H, W] and bool [H, W].
    """
    cloud = _cloud_copy(xyz)
    z = fill_gaps(cloud[..., 2], n_fills)
    fg = foreground_from_depth(z, corner_plane_background(z, corner), threshold)
    if largest:
        fg = largest_component(fg, connectivity)
    if not fg.any():
        return np.zeros(z.shape, dtype=np.float32), fg
    z64 = z.astype(np.float64)
    m = z64[fg].mean()
    depth = np.where(fg, z64 - m, 0.0) * scale
    return depth.astype(np.float32), fg


def _bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """[n_out, n_in] weights of torch's bilinear resize with ``align_corners=False`` (no
    antialiasing): ``src = (i + 0.5) * n_in / n_out - 0.5``, clamped below at 0, between source
    ``floor(src)`` and the next one (clamped at the last)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, i0), 1.0 - frac)
    np.add.at(weights, (rows, i1), frac)
    return weights


def resize_bilinear(array: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Torch's ``F.interpolate(mode="bilinear", align_corners=False)`` (no antialiasing) of an
    [H, W] or [H, W, C] map, as AST and MADFlow resize depth and foreground (pointcloud.md
    section 4, AST steps 7-8). Computed in float64 (torch uses float32 coordinates).

    Args:
      array: [H, W] or [H, W, C].
      size: output side, or ``(out_h, out_w)``.

    Returns:
      float32 [out_h, out_w] or [out_h, out_w, C].
    """
    out_h, out_w = (size, size) if np.isscalar(size) else size
    a = np.asarray(array, dtype=np.float64)
    mh = _bilinear_matrix(out_h, a.shape[0])
    mw = _bilinear_matrix(out_w, a.shape[1])
    tmp = np.einsum("ih,hw...->iw...", mh, a)  # two products, not one 3-way einsum (1 s -> 1 ms at 256 px)
    return np.einsum("jw,iw...->ij...", mw, tmp).astype(np.float32)


def foreground_at(fg: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """float32 [S, S] soft foreground weights ``fg_S = bilinear(fg, S)``, left soft (madflow-brief
    step 4; AST ``train``: ``F.interpolate(fg, size, mode="bilinear", align_corners=False)``).

    From 8S to S each output is the mean of source pixels ``8i+3`` and ``8i+4`` in each axis
    (pointcloud.md section 4, AST step 8), not an 8x8 mean.
    """
    return resize_bilinear(np.asarray(fg, dtype=np.float32), size)
