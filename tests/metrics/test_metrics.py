"""AUROC / AP / F1-max against scikit-learn and brute force; resizing; evaluate(); errors."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from jaxflow_ad import metrics as M


def _image_data(seed, n=40, ties=False):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.normal(size=n) + 0.8 * labels
    if ties:
        scores = np.round(scores)
    return labels, scores


def _pixel_data(seed, n=3, size=(9, 11)):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n,) + size, dtype=np.uint8)
    masks[1, 2:5, 3:7] = 1
    masks[2, 6:9, 0:2] = 1
    maps = (rng.normal(size=(n,) + size) + masks).astype(np.float32)
    return masks, maps


def brute_f1_max(y, s):
    y = np.asarray(y).astype(bool)
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = np.sum(pred & y)
        fp = np.sum(pred & ~y)
        fn = np.sum(~pred & y)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        best = max(best, f1)
    return best


# ----------------------------------------------------------------------------- vs sklearn


@pytest.mark.parametrize("ties", [False, True])
def test_image_metrics_match_sklearn_and_brute_force(ties):
    labels, scores = _image_data(0, ties=ties)
    assert M.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    ap = average_precision_score(labels, scores)
    assert M.image_ap(labels, scores) == pytest.approx(ap, abs=1e-12)
    assert M.average_precision(labels, scores) == pytest.approx(ap, abs=1e-12)
    f1 = brute_f1_max(labels, scores)
    assert M.image_f1_max(labels, scores) == pytest.approx(f1, abs=1e-12)
    got, thr = M.f1_max(labels, scores, return_threshold=True)
    assert got == pytest.approx(f1, abs=1e-12)
    # the returned threshold achieves it
    assert brute_f1_max(labels, np.where(scores >= thr, 1.0, 0.0)) == pytest.approx(f1)


def test_image_auroc_hand_value_with_tie():
    # pairs (anomalous, normal): (0.9, 0.1) win, (0.9, 0.5) win, (0.5, 0.1) win, (0.5, 0.5) tie
    assert M.image_auroc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(3.5 / 4)
    assert M.image_auroc(np.array([False, True]), [0.2, 0.1]) == 0.0


def test_pixel_metrics_match_sklearn_on_flattened_pixels():
    masks, maps = _pixel_data(1)
    y, s = masks.ravel() > 0, maps.ravel()
    assert M.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert M.pixel_f1_max(masks, maps) == pytest.approx(brute_f1_max(y, s), abs=1e-12)
    f1, thr = M.pixel_f1_max(masks, maps, return_threshold=True)
    assert brute_f1_max(y, (s >= thr).astype(float)) == pytest.approx(f1)


def test_pixel_metrics_accept_lists_of_different_sizes():
    rng = np.random.default_rng(2)
    masks = [rng.random((5, 7)) > 0.7, rng.random((8, 4)) > 0.7]
    maps = [rng.normal(size=m.shape) + m for m in masks]
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    assert M.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_jax_arrays_are_accepted():
    jnp = pytest.importorskip("jax.numpy")
    masks, maps = _pixel_data(3)
    assert M.pixel_auroc(jnp.asarray(masks), jnp.asarray(maps)) == pytest.approx(M.pixel_auroc(masks, maps))


# ----------------------------------------------------------------------------- resizing


def test_resize_maps_is_half_pixel_bilinear():
    np.testing.assert_allclose(M.resize_maps(np.array([[[0.0, 1.0]]]), (1, 4))[0], [[0.0, 0.25, 0.75, 1.0]])
    rng = np.random.default_rng(4)
    maps = rng.random((2, 5, 7)).astype(np.float32)
    out = M.resize_maps(maps, (13, 9))
    assert out.shape == (2, 13, 9) and out.dtype == np.float32
    for a, b in zip(maps, out):
        ref = ndimage.zoom(a.astype(np.float64), (13 / 5, 9 / 7), order=1, grid_mode=True, mode="nearest")
        np.testing.assert_allclose(b, ref, atol=1e-6)
    # per-map sizes give a list
    outs = M.resize_maps(maps, [(10, 14), (5, 7)])
    assert isinstance(outs, list) and outs[0].shape == (10, 14)
    np.testing.assert_array_equal(outs[1], maps[1])
    assert M.resize_maps(maps, 6).shape == (2, 6, 6)


def test_resize_masks_is_nearest_and_binary():
    mask = np.zeros((1, 4, 4), dtype=np.uint8)
    mask[0, 2:, 2:] = 255
    out = M.resize_masks(mask, 2)
    assert out.dtype == bool
    np.testing.assert_array_equal(out[0], [[False, False], [False, True]])
    up = M.resize_masks(np.array([[[0, 1]]]), (1, 4))
    np.testing.assert_array_equal(up[0], [[False, False, True, True]])
    with pytest.raises(ValueError, match="got 3 sizes for 1 images"):
        M.resize_masks(mask, [(2, 2)] * 3)


# ----------------------------------------------------------------------------- evaluate


def _native_case(seed=5):
    rng = np.random.default_rng(seed)
    sizes = [(12, 16), (16, 16), (10, 14), (16, 12)]
    masks = []
    for i, (h, w) in enumerate(sizes):
        m = np.zeros((h, w), dtype=np.uint8)
        if i % 2:
            m[2:6, 3:9] = 255
            m[h - 3 :, w - 2 :] = 255
        masks.append(m)
    labels = np.array([0, 1, 0, 1])
    maps = rng.random((4, 4, 4)).astype(np.float32)
    maps[1, 0:2, 0:2] += 1.0
    maps[3, 1:2, 1:3] += 0.5
    scores = maps.reshape(4, -1).max(axis=1)
    return labels, scores, masks, maps


def test_evaluate_native_resolution_upsamples_maps_to_each_mask():
    labels, scores, masks, maps = _native_case()
    got = M.evaluate(labels, scores, masks, maps)
    assert set(got) == set(M.METRIC_KEYS) and all(isinstance(v, float) for v in got.values())
    up = M.resize_maps(maps, [m.shape for m in masks])
    assert isinstance(up, list) and up[0].shape == (12, 16)
    y = np.concatenate([m.ravel() > 0 for m in masks])
    s = np.concatenate([a.ravel() for a in up])
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert got["pixel_f1_max"] == pytest.approx(brute_f1_max(y, s), abs=1e-12)
    assert got["aupro"] == pytest.approx(M.aupro(masks, up), abs=1e-12)
    assert got["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert got["image_ap"] == pytest.approx(average_precision_score(labels, scores))
    assert got["image_f1_max"] == pytest.approx(brute_f1_max(labels, scores))


def test_evaluate_fixed_resolution_resizes_masks_and_maps():
    labels, scores, masks, maps = _native_case()
    got = M.evaluate(labels, scores, masks, maps, resolution=8, fpr_limit=0.2)
    m8 = M.resize_masks(masks, 8)
    a8 = M.resize_maps(maps, 8)
    assert m8.shape == a8.shape == (4, 8, 8)
    assert got["pixel_auroc"] == pytest.approx(M.pixel_auroc(m8, a8), abs=1e-12)
    assert got["aupro"] == pytest.approx(M.aupro(m8, a8, fpr_limit=0.2), abs=1e-12)
    native = M.evaluate(labels, scores, masks, maps, fpr_limit=0.2)
    assert got["aupro"] != pytest.approx(native["aupro"], abs=1e-6)
    assert got["image_auroc"] == native["image_auroc"]


def test_evaluate_with_mask_array_of_map_size_needs_no_resize():
    masks, maps = _pixel_data(6)
    labels = np.array([0, 1, 1])
    scores = maps.reshape(3, -1).max(1)
    got = M.evaluate(labels, scores, masks, maps, fpr_limit=0.1)
    assert got["pixel_auroc"] == pytest.approx(M.pixel_auroc(masks, maps), abs=1e-12)
    assert got["aupro"] == pytest.approx(M.aupro(masks, maps, fpr_limit=0.1), abs=1e-12)
    assert (
        M.evaluate(labels, scores, masks, maps, resolution=9)["pixel_auroc"] != got["pixel_auroc"]
    )  # 9x11 -> 9x9 changes the pixels


# ----------------------------------------------------------------------------- errors


def test_image_level_errors():
    with pytest.raises(ValueError, match="labels has 3 entries but scores has 2"):
        M.image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(
        ValueError,
        match=r"image_auroc is undefined: all 3 images are "
        r"anomalous.*at least one normal",
    ):
        M.image_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="image_auroc is undefined: all 2 images are normal"):
        M.image_auroc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"labels must be 0 \(normal\) or 1.*\[0, 2\]"):
        M.image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"scores contain 1 NaN and 1 infinite"):
        M.image_auroc([0, 1, 1], [0.1, np.nan, np.inf])
    with pytest.raises(ValueError, match="image_ap is undefined: none of the 2 images"):
        M.image_ap([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="must be 1-D"):
        M.image_f1_max([[0, 1]], [[0.1, 0.2]])


def test_pixel_level_errors():
    masks, maps = _pixel_data(7)
    with pytest.raises(ValueError, match=r"pixel_auroc is undefined: all 297 pixels are normal"):
        M.pixel_auroc(np.zeros_like(masks), maps)
    bad = maps.copy()
    bad[0, 0, 0] = bad[2, 1, 1] = np.nan
    with pytest.raises(
        ValueError,
        match=r"maps contain 2 NaN and 0 infinite value\(s\) in 2 of "
        r"3 image\(s\) \(first: image 0\)",
    ):
        M.pixel_auroc(masks, bad)
    with pytest.raises(ValueError, match=r"expected an array \[N,H,W\]"):
        M.pixel_auroc(masks, maps[:, None])
    with pytest.raises(ValueError, match=r"masks\[1\] is None.*all-zero mask"):
        M.pixel_auroc([masks[0], None, masks[2]], maps)


def test_evaluate_errors():
    labels, scores, masks, maps = _native_case()
    with pytest.raises(ValueError, match="got 4 labels but 3 maps"):
        M.evaluate(labels, scores, masks, maps[:3])
    with pytest.raises(ValueError, match="got 4 labels but 2 masks"):
        M.evaluate(labels, scores, masks[:2], maps)
    with pytest.raises(ValueError, match="resolution='model'; expected 'native' or a positive"):
        M.evaluate(labels, scores, masks, maps, resolution="model")
    with pytest.raises(ValueError, match="resolution=0"):
        M.evaluate(labels, scores, masks, maps, resolution=0)
    with pytest.raises(ValueError, match="image_auroc is undefined"):
        M.evaluate(np.ones(4, int), scores, masks, maps)
    with pytest.raises(ValueError, match=r"fpr_limit=-0\.1"):
        M.evaluate(labels, scores, masks, maps, fpr_limit=-0.1)
    with pytest.raises(ValueError, match=r"pixel_auroc is undefined: all \d+ pixels are normal"):
        M.evaluate(labels, scores, [np.zeros_like(m) for m in masks], maps)


# ----------------------------------------------------------------------------- shared sort


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 20])
@pytest.mark.parametrize("quantize", [None, 3])
def test_single_sort_sweep_matches_sklearn_for_any_chunking(monkeypatch, chunk, quantize):
    """evaluate() walks the sorted pixels in chunks; runs of ties may span chunk borders."""
    from jaxflow_ad.metrics import _curves
    from jaxflow_ad.metrics._inputs import gather_pixels

    monkeypatch.setattr(_curves, "CHUNK", chunk)
    masks, maps = _pixel_data(8, n=4, size=(7, 9))
    masks[3, 0:2, 0:3] = 1
    if quantize:
        maps = np.round(maps * quantize) / quantize
    y, s = masks.ravel() > 0, maps.ravel()
    px = gather_pixels(masks, maps, with_regions=True)
    res = _curves.sweep(px, fpr_limit=0.3, curve=True)
    assert res["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert res["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert res["f1_max"] == pytest.approx(brute_f1_max(y, s), abs=1e-12)
    assert res["pro_area"] / 0.3 == pytest.approx(
        M.area_up_to(np.r_[0.0, res["fpr"]], np.r_[0.0, res["pro"]], 0.3) / 0.3, abs=1e-12
    )
    monkeypatch.setattr(_curves, "CHUNK", 1 << 20)
    ref = _curves.sweep(px, curve=True)
    for key in ("fpr", "pro", "thresholds"):
        np.testing.assert_allclose(res[key], ref[key], atol=1e-12)
    labels = np.array([0, 1, 1, 1])
    got = M.evaluate(labels, maps.reshape(4, -1).max(1), masks, maps)
    assert got["aupro"] == pytest.approx(res["pro_area"] / 0.3, abs=1e-12)


def test_evaluate_by_defect_is_each_kind_against_the_good_images():
    evaluate, evaluate_by_defect = M.evaluate, M.evaluate_by_defect
    rng = np.random.default_rng(0)
    n, h = 9, 8
    kinds = ["good"] * 3 + ["stain"] * 3 + ["scratch"] * 3
    labels = np.array([k != "good" for k in kinds], np.int32)
    masks = np.zeros((n, h, h), bool)
    masks[3:6, 2:6, 2:6] = True  # stains: large
    masks[6:, :, 4] = True  # scratches: one column
    maps = rng.random((n, h, h)).astype(np.float32)
    maps[3:6] += 2.0 * masks[3:6]  # stains found
    maps[6:] += 0.05 * masks[6:]  # scratches barely
    scores = maps.reshape(n, -1).max(1)
    out = evaluate_by_defect(labels, scores, masks, maps, kinds)
    assert set(out) == {"stain", "scratch"} and out["stain"]["count"] == 3
    assert out["stain"]["pixel_auroc"] == 1.0 and out["scratch"]["pixel_auroc"] < 0.8
    for kind, rows in (("stain", [0, 1, 2, 3, 4, 5]), ("scratch", [0, 1, 2, 6, 7, 8])):
        ref = evaluate(labels[rows], scores[rows], masks[rows], maps[rows])
        for k in ("image_auroc", "pixel_auroc", "aupro"):
            assert out[kind][k] == ref[k]
        np.testing.assert_allclose(
            out[kind]["pixel_auroc"], roc_auc_score(masks[rows].ravel(), maps[rows].ravel()), rtol=1e-12
        )
    with pytest.raises(ValueError, match="no 'good' images"):
        evaluate_by_defect(labels[3:], scores[3:], masks[3:], maps[3:], kinds[3:])


def test_mask_resize_protocols_by_hand():
    from jaxflow_ad.metrics._inputs import resize_mask

    block = np.zeros((4, 4), bool)
    block[:2, :2] = True  # a full 2x2 block: every protocol keeps its pixel when halving
    corner = np.zeros((4, 4), bool)
    corner[1, 1] = True  # one pixel: a quarter of an output pixel
    for how in ("nearest", "bilinear_round", "cv2_exact"):
        np.testing.assert_array_equal(resize_mask(block, (2, 2), how), [[True, False], [False, False]])
    assert resize_mask(corner, (2, 2), "nearest")[0, 0]  # nearest samples source pixel (1, 1)
    assert not resize_mask(corner, (2, 2), "bilinear_round").any()  # 0.25 rounds to 0
    assert not resize_mask(corner, (2, 2), "cv2_exact").any()  # 64/255 is not exactly 1
    # three quarters covered: bilinear rounding keeps it (0.55), FAIR's exact rule drops it (191 != 255)
    half = block.copy()
    half[1, 1] = False
    assert resize_mask(half, (2, 2), "bilinear_round")[0, 0] and not resize_mask(half, (2, 2), "cv2_exact")[0, 0]
    with pytest.raises(ValueError, match="eval.mask_resize"):
        resize_mask(block, (2, 2), "area")
    maps = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    a = M.evaluate([0, 1], [0.1, 0.9], [np.zeros((4, 4), bool), half], maps, resolution=2, mask_resize="bilinear_round")
    b = M.evaluate(
        [0, 1], [0.1, 0.9], [np.zeros((4, 4), bool), block], maps, resolution=2, mask_resize="bilinear_round"
    )
    assert a["pixel_auroc"] == b["pixel_auroc"]  # the same 2x2 ground truth after resizing
