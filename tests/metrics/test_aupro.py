"""AUPRO: hand-computed cases and an independent slow reference (threshold sweep)."""

import warnings

import numpy as np
import pytest

from jaxflow_ad.metrics import DegenerateMetricWarning, area_up_to, aupro, pro_curve

# ----------------------------------------------------------------------------- slow reference


def _label_bfs(mask, connectivity):
    """Connected components by explicit flood fill (independent of scipy)."""
    if connectivity == 8:
        steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    else:
        steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    h, w = mask.shape
    lab = np.zeros((h, w), dtype=int)
    n = 0
    for y0 in range(h):
        for x0 in range(w):
            if mask[y0, x0] and lab[y0, x0] == 0:
                n += 1
                lab[y0, x0] = n
                stack = [(y0, x0)]
                while stack:
                    y, x = stack.pop()
                    for dy, dx in steps:
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and lab[yy, xx] == 0:
                            lab[yy, xx] = n
                            stack.append((yy, xx))
    return lab, n


def slow_aupro(masks, maps, fpr_limit=0.3, connectivity=8):
    """Sweep every distinct score as a threshold; per-region overlaps counted explicitly."""
    masks = [np.asarray(m) > 0 for m in masks]
    maps = [np.asarray(a, dtype=np.float64) for a in maps]
    regions = []
    for i, m in enumerate(masks):
        lab, n = _label_bfs(m, connectivity)
        regions += [(i, lab == k) for k in range(1, n + 1)]
    n_bg = sum(int((~m).sum()) for m in masks)
    points = [(0.0, 0.0)]
    for t in sorted(set(np.concatenate([a.ravel() for a in maps]).tolist()), reverse=True):
        pred = [a >= t for a in maps]
        fp = sum(int((p & ~m).sum()) for p, m in zip(pred, masks))
        overlaps = [(pred[i] & r).sum() / r.sum() for i, r in regions]
        points.append((fp / n_bg, float(np.mean(overlaps))))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_at = y0 + (fpr_limit - x0) * (y1 - y0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_at) / 2
            break
    return area / fpr_limit


def _random_case(seed, n=3, size=(10, 12), quantize=None):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n,) + size, dtype=np.uint8)
    for i in range(1, n):  # image 0 stays normal
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size[0] - 2), rng.integers(0, size[1] - 2)
            hh, ww = rng.integers(1, 4), rng.integers(1, 5)
            masks[i, y : y + hh, x : x + ww] = 255
    maps = rng.normal(size=(n,) + size) + 1.5 * (masks > 0)
    if quantize:
        maps = np.round(maps * quantize) / quantize  # many ties
    return masks, maps.astype(np.float32)


# ----------------------------------------------------------------------------- hand cases


def test_perfect_map_is_one():
    masks, _ = _random_case(0)
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0, abs=1e-12)
    # strictly above, with noise inside each class
    maps = np.random.default_rng(1).random(masks.shape) + 2.0 * (masks > 0)
    assert aupro(masks, maps) == pytest.approx(1.0, abs=1e-12)


def test_reversed_map_is_zero():
    masks, _ = _random_case(2)
    maps = np.random.default_rng(3).random(masks.shape) - 2.0 * (masks > 0)
    assert aupro(masks, maps) == 0.0
    assert slow_aupro(masks, maps) == 0.0


def test_constant_map_gives_the_diagonal():
    # All scores tie: one point (1, 1) after (0, 0); PRO(0.3) = 0.3 by interpolation,
    # area 0.3 * 0.3 / 2 = 0.045, / 0.3 = 0.15. In general fpr_limit / 2.
    masks, _ = _random_case(4)
    const = np.full(masks.shape, 0.7, dtype=np.float32)
    fpr, pro, thr = pro_curve(masks, const)
    np.testing.assert_allclose(fpr, [0.0, 1.0])
    np.testing.assert_allclose(pro, [0.0, 1.0], atol=1e-12)
    assert aupro(masks, const) == pytest.approx(0.15, abs=1e-12)
    assert aupro(masks, const, fpr_limit=0.5) == pytest.approx(0.25, abs=1e-12)
    assert aupro(masks, const, fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)


def _strip_case():
    """One row: a 4-pixel region then 10 background pixels (FPR steps of 0.1).

    Descending order: b1 r1 b2 r2 {b3 r3 tied} b4 ... r4. Curve (ties collapsed):
    (0,0) (.1,0) (.1,.25) (.2,.25) (.2,.5) (.3,.75) (.4,.75) ...
    Area to 0.3 = .1*.25 + .1*(.5+.75)/2 = .0875 -> AUPRO = .0875/.3.
    To 0.25: .025 + .05*(.5+.625)/2 = .053125 -> /.25 = .2125 (interpolated PRO .625).
    Keeping b3 before r3 would give .075/.3, r3 before b3 .1/.3.
    """
    mask = np.array([[1, 1, 1, 1] + [0] * 10], dtype=bool)
    r = [0.9, 0.8, 0.7, 0.1]
    b = [0.95, 0.85, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25]
    return mask[None], np.array([r + b], dtype=np.float64)[None]


def test_hand_computed_strip_with_a_tie():
    masks, maps = _strip_case()
    assert aupro(masks, maps) == pytest.approx(0.0875 / 0.3, abs=1e-12)
    assert aupro(masks, maps, fpr_limit=0.25) == pytest.approx(0.2125, abs=1e-12)
    assert slow_aupro(masks, maps) == pytest.approx(0.0875 / 0.3, abs=1e-12)
    fpr, pro, thr = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr[:7], [0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.4], atol=1e-12)
    np.testing.assert_allclose(pro[:7], [0, 0, 0.25, 0.25, 0.5, 0.75, 0.75], atol=1e-12)
    np.testing.assert_allclose(thr[:7], [np.inf, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6])


def test_normal_image_contributes_only_background():
    # Image A: perfect map, 4 region pixels, 12 background pixels. Image B: normal, 4 pixels,
    # scored above everything. B=16 background pixels in total:
    # (0,0) -> (4/16, 0) -> (.25, 1) -> (1, 1); area to .3 = .05 * 1 -> AUPRO = 1/6.
    mask_a = np.zeros((4, 4), dtype=bool)
    mask_a[1:3, 1:3] = True
    map_a = mask_a.astype(np.float64)
    masks = [mask_a, np.zeros((2, 2), dtype=bool)]
    assert aupro(masks, [map_a, np.full((2, 2), 2.0)]) == pytest.approx(1 / 6, abs=1e-12)
    # Scored below everything, it only enlarges the denominator: still perfect.
    assert aupro(masks, [map_a, np.full((2, 2), -1.0)]) == pytest.approx(1.0, abs=1e-12)
    # Normal images with middling scores change the result exactly as the reference says.
    masks, maps = _random_case(5, n=4)
    assert aupro(masks, maps) == pytest.approx(slow_aupro(masks, maps), abs=1e-6)


def test_single_region_partial_detection():
    # 3x3 image, one region of 3 pixels in the top row, 6 background pixels.
    mask = np.zeros((3, 3), dtype=bool)
    mask[0] = True
    amap = np.array([[0.9, 0.5, 0.1], [0.8, 0.2, 0.2], [0.3, 0.2, 0.0]])
    # order: .9(r) .8(b) .5(r) .3(b) {.2 .2 .2}(b) .1(r) 0(b)
    # (0,0) (0,1/3) (1/6,1/3) (1/6,2/3) (2/6,2/3) ...; area to .3 = 1/6*1/3 + (.3-1/6)*2/3
    expected = (1 / 18 + (0.3 - 1 / 6) * 2 / 3) / 0.3
    assert aupro(mask[None], amap[None]) == pytest.approx(expected, abs=1e-12)


def test_diagonal_touching_regions_are_one_region():
    # An L of 3 pixels and a single pixel touching it only at a corner: one 8-connected
    # region of 4 pixels (4-connectivity would give two, of 3 and 1 pixels).
    mask = np.zeros((5, 5), dtype=bool)
    mask[1, 1] = mask[2, 1] = mask[2, 2] = True  # the L
    mask[3, 3] = True  # diagonal neighbour of (2, 2)
    amap = np.full((5, 5), 0.5)
    amap[mask] = 0.0
    amap[3, 3] = 1.0  # only the single pixel is found before the background
    # 8-connected: PRO after it = 1/4, flat at 1/4 up to FPR 1 -> AUPRO = 0.25.
    # 4-connected: PRO = (0/3 + 1/1)/2 = 0.5 -> AUPRO = 0.5.
    assert aupro(mask[None], amap[None]) == pytest.approx(0.25, abs=1e-12)
    assert slow_aupro([mask], [amap], connectivity=8) == pytest.approx(0.25, abs=1e-12)
    assert slow_aupro([mask], [amap], connectivity=4) == pytest.approx(0.5, abs=1e-12)


def test_regions_do_not_span_images():
    # The same region split over the border of two images is two regions.
    m1 = np.zeros((2, 3), dtype=bool)
    m1[1, 2] = True
    m2 = np.zeros((2, 3), dtype=bool)
    m2[0, 2] = True
    maps = [np.where(m1, 1.0, 0.5), np.where(m2, 0.0, 0.5)]
    # two regions, one found first: PRO 1/2 over the background plateau -> 0.5
    assert aupro([m1, m2], maps) == pytest.approx(0.5, abs=1e-12)


# ----------------------------------------------------------------------------- reference


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("quantize", [None, 4])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_matches_slow_reference(seed, quantize, fpr_limit):
    masks, maps = _random_case(10 + seed, quantize=quantize)
    fast = aupro(masks, maps, fpr_limit=fpr_limit)
    assert fast == pytest.approx(slow_aupro(masks, maps, fpr_limit), abs=1e-6)
    assert 0.0 < fast < 1.0


def test_masks_of_different_sizes_match_reference():
    rng = np.random.default_rng(7)
    masks, maps = [], []
    for shape in [(6, 9), (11, 7), (8, 8)]:
        m = np.zeros(shape, dtype=bool)
        m[1:4, 2:5] = True
        m[shape[0] - 2 :, shape[1] - 1] = True
        masks.append(m)
        maps.append(rng.normal(size=shape) + m)
    assert aupro(masks, maps) == pytest.approx(slow_aupro(masks, maps), abs=1e-6)


def test_invariant_to_monotone_rescaling_and_mask_encoding():
    masks, maps = _random_case(20, quantize=3)
    base = aupro(masks, maps)
    assert aupro(masks, np.exp(2.0 * maps.astype(np.float64)) + 5.0) == pytest.approx(base, abs=1e-12)
    assert aupro(masks > 0, maps) == base  # 0/255 masks are binarised with > 0


def test_pro_curve_shape():
    masks, maps = _random_case(30, quantize=5)
    fpr, pro, thr = pro_curve(masks, maps)
    assert fpr[0] == 0.0 and pro[0] == 0.0 and np.isinf(thr[0])
    assert fpr[-1] == 1.0 and pro[-1] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    assert np.all(np.diff(thr) < 0)  # one point per distinct score
    assert len(thr) == len(np.unique(maps)) + 1


# ----------------------------------------------------------------------------- pieces / edges


def test_area_up_to_interpolates_at_the_limit():
    x = np.array([0.0, 0.2, 0.2, 0.6, 1.0])
    y = np.array([0.0, 0.2, 0.6, 1.0, 1.0])
    # to 0.2: .02; vertical step adds nothing; 0.2 -> 0.4 with y .6 -> .8: .14
    assert area_up_to(x, y, 0.4) == pytest.approx(0.02 + 0.14)
    assert area_up_to(x, y, 0.2) == pytest.approx(0.02)
    assert area_up_to(x, y, 1.0) == pytest.approx(0.02 + 0.4 * 0.8 + 0.4)
    with pytest.raises(ValueError, match="outside the curve"):
        area_up_to(x, y, 1.5)


def test_degenerate_inputs_warn_and_return_zero():
    maps = np.random.default_rng(0).random((2, 4, 4))
    with pytest.warns(DegenerateMetricWarning, match="no anomalous region"):
        assert aupro(np.zeros((2, 4, 4)), maps) == 0.0
    with pytest.warns(DegenerateMetricWarning, match="no background"):
        assert aupro(np.ones((2, 4, 4)), maps) == 0.0
    with pytest.raises(ValueError, match="no anomalous region"):
        pro_curve(np.zeros((2, 4, 4)), maps)


def test_bad_input_raises():
    masks, maps = _random_case(40)
    with pytest.raises(ValueError, match=r"fpr_limit=0\.0.*\(0, 1\]"):
        aupro(masks, maps, fpr_limit=0.0)
    with pytest.raises(ValueError, match=r"fpr_limit=1\.5"):
        aupro(masks, maps, fpr_limit=1.5)
    with pytest.raises(ValueError, match="3 masks but 2 anomaly maps"):
        aupro(masks, maps[:2])
    bad = maps.copy()
    bad[1, 0, :3] = np.nan
    with pytest.raises(ValueError, match=r"3 NaN and 0 infinite value\(s\) in 1 of 3 image"):
        aupro(masks, bad)
    with pytest.raises(
        ValueError,
        match=r"mask 0 has shape \(10, 12\) but map 0 has shape "
        r"\(5, 6\).*resize_maps",
    ):
        aupro(masks, maps[:, ::2, ::2])


def test_no_warning_on_regular_input():
    masks, maps = _random_case(50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aupro(masks, maps)


@pytest.mark.parametrize("chunk", [1, 4, 37])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_chunked_sweep_matches_slow_reference(monkeypatch, chunk, fpr_limit):
    from jaxflow_ad.metrics import _curves

    monkeypatch.setattr(_curves, "CHUNK", chunk)
    masks, maps = _random_case(60, quantize=3)
    assert aupro(masks, maps, fpr_limit) == pytest.approx(slow_aupro(masks, maps, fpr_limit), abs=1e-6)
    masks, maps = _strip_case()
    assert aupro(masks, maps) == pytest.approx(0.0875 / 0.3, abs=1e-12)
