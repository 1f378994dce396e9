"""The built-in multimodal set (jaxflow_ad/data/synthetic3d.py): the MVTec 3D-AD layout, the
generator's promises (madflow-brief.md sections 4 and 7), determinism, reuse and atomic writes."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from jaxflow_ad.data import synthetic3d as s3
from jaxflow_ad.data.mvtec import DatasetError

SIZE = 96
SMALL = dict(n_train=2, n_validation=1, n_test_good=1, n_test_per_defect=1, size=SIZE)
SEEDS = (0, 1, 2)


def _digest(root, category):
    h = hashlib.sha256()
    for p in sorted((root / category).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _files(cat_dir):
    return sorted(str(p.relative_to(cat_dir)) for p in cat_dir.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return s3.ensure_builtin3d(tmp_path_factory.mktemp("builtin3d"), **SMALL)


@pytest.fixture(scope="module")
def renders():
    """{(category, kind, seed): (rgb, xyz, mask)} for every kind and good, at SIZE."""
    out = {}
    for c in s3.BUILTIN3D_CATEGORIES:
        for seed in SEEDS:
            for kind in ("good",) + s3.DEFECT_KINDS_3D[c]:
                out[c, kind, seed] = s3.render_sample3d(c, kind, seed, SIZE)
    return out


# ----------------------------------------------------------------------------
# Layout


def test_layout(small_root):
    assert sorted(p.name for p in small_root.iterdir()) == sorted(s3.BUILTIN3D_CATEGORIES)
    for c in s3.BUILTIN3D_CATEGORIES:
        cat = small_root / c
        kinds = s3.DEFECT_KINDS_3D[c]
        expected = {s3.MANIFEST, "class_ids.json", "calibration/camera_parameters.json"}
        for split, labels, n in (("train", ["good"], 2), ("validation", ["good"], 1), ("test", ["good", *kinds], 1)):
            assert sorted(p.name for p in (cat / split).iterdir()) == sorted(labels)
            for label in labels:
                subs = ("rgb", "xyz", "gt") if split == "test" else ("rgb", "xyz")
                assert sorted(p.name for p in (cat / split / label).iterdir()) == sorted(subs)
                for i in range(n):
                    expected |= {f"{split}/{label}/rgb/{i:03d}.png", f"{split}/{label}/xyz/{i:03d}.tiff"}
                    if split == "test":
                        expected.add(f"{split}/{label}/gt/{i:03d}.png")
        assert _files(cat) == sorted(expected)

        class_ids = json.loads((cat / "class_ids.json").read_text())
        assert class_ids == {"0": "good", **{str(255 - k): kind for k, kind in enumerate(kinds)}}
        camera = json.loads((cat / "calibration" / "camera_parameters.json").read_text())
        assert set(camera) == {"cx", "cy", "focus", "image_height", "image_width", "kappa", "sx", "sy"}
        assert camera["image_width"] == camera["image_height"] == SIZE
        assert camera["focus"] / camera["sx"] == pytest.approx(1000 * SIZE / 256)
        manifest = json.loads((cat / s3.MANIFEST).read_text())
        assert manifest["spec"]["format_version"] == s3.FORMAT_VERSION
        assert manifest["spec"]["image_size"] == SIZE

        for label in ("good", *kinds):
            folder = cat / "test" / label
            rgb = Image.open(folder / "rgb" / "000.png")
            gt = Image.open(folder / "gt" / "000.png")
            assert rgb.mode == "RGB" and gt.mode == "L" and rgb.size == gt.size == (SIZE, SIZE)
            values = set(np.unique(np.asarray(gt)).tolist())
            if label == "good":
                assert values == {0}
            else:
                assert values == {0, 255 - kinds.index(label)}
                assert {class_ids[str(v)] for v in values} == {"good", label}
            with tifffile.TiffFile(folder / "xyz" / "000.tiff") as tif:
                page = tif.pages[0]
                assert page.compression == 1 and page.predictor == 1
                xyz = tif.asarray()
            assert xyz.dtype == np.float32 and xyz.shape == (SIZE, SIZE, 3)
            valid = (xyz != 0).any(-1)
            assert valid.mean() > 0.95 and np.all(xyz[~valid] == 0)
            assert xyz[valid, 2].min() > 0.37 and xyz[valid, 2].max() < 0.41  # metres


def test_files_are_render_sample(small_root):
    for c in s3.BUILTIN3D_CATEGORIES:
        for split, kind in (("train", "good"), ("validation", "good"), ("test", "good"), ("test", "dent")):
            rgb, xyz, mask = s3.render_sample3d(c, kind, s3.sample_seed(c, split, kind, 0), SIZE)
            folder = small_root / c / split / kind
            np.testing.assert_array_equal(np.asarray(Image.open(folder / "rgb" / "000.png")), rgb)
            np.testing.assert_array_equal(tifffile.imread(folder / "xyz" / "000.tiff"), xyz)
            if split == "test":
                np.testing.assert_array_equal(np.asarray(Image.open(folder / "gt" / "000.png")) > 0, mask)
    # Every sample has its own seed: train, validation and test differ.
    seeds = {
        tuple(s3.sample_seed("puck", sp, k, i)) for sp in ("train", "test") for k in ("good", "cut") for i in (0, 1)
    }
    assert len(seeds) == 8


# ----------------------------------------------------------------------------
# The generator's promises


@pytest.mark.parametrize("category", s3.BUILTIN3D_CATEGORIES)
def test_defect_promises(category, renders):
    for seed in SEEDS:
        rgb0, xyz0, mask0 = renders[category, "good", seed]
        assert rgb0.dtype == np.uint8 and xyz0.dtype == np.float32 and not mask0.any()
        for kind in s3.DEFECT_KINDS_3D[category]:
            rgb, xyz, mask = renders[category, kind, seed]
            assert mask.dtype == bool and mask.sum() >= 3, (kind, seed)
            outside = ~mask
            np.testing.assert_array_equal(rgb[outside], rgb0[outside])
            np.testing.assert_array_equal(xyz[outside], xyz0[outside])
            if kind in s3.GEOMETRY_KINDS_3D:
                assert rgb.tobytes() == rgb0.tobytes(), (kind, seed)  # RGB is blind to it
                valid = mask & (xyz != 0).any(-1) & (xyz0 != 0).any(-1)
                assert valid.sum() >= 0.3 * mask.sum()
                moved = np.abs(xyz[..., 2] - xyz0[..., 2])[valid]
                assert (moved >= 1.5e-3).mean() >= 0.75, (kind, seed, (moved >= 1.5e-3).mean())
                assert moved.max() <= 4.2e-3
            elif kind == "stain":
                assert xyz.tobytes() == xyz0.tobytes()  # the cloud is blind to it
                diff = np.abs(rgb.astype(int) - rgb0.astype(int))[mask]
                assert (diff.max(-1) > 0).mean() >= 0.75 and diff.mean() > 12
            else:  # hole: both modalities
                assert np.all(xyz[mask] == 0)
                assert rgb[mask].astype(int).sum() < 0.5 * rgb0[mask].astype(int).sum()


def _heights_over_corner_plane(xyz, block=6):
    """Distances (m) of the valid points from the plane fitted to the four corner blocks, and of
    the corner points themselves."""
    valid = (xyz != 0).any(-1)
    corners = np.zeros(valid.shape, bool)
    for rows in (slice(0, block), slice(-block, None)):
        for cols in (slice(0, block), slice(-block, None)):
            corners[rows, cols] = True
    pts = xyz[corners & valid].astype(np.float64)
    centre = pts.mean(0)
    normal = np.linalg.svd(pts - centre)[2][-1]
    dist = np.abs((xyz.astype(np.float64) - centre) @ normal)
    return dist[valid & ~corners], dist[valid & corners]


def _ast_foreground(z, threshold=0.007):
    """AST's rule (madflow-brief step 4): |bilinear plane through the 2x2 corner means - z| > 7 mm."""
    h, w = z.shape
    m = [z[r, c][z[r, c] > 0].mean() for r, c in ((np.s_[:2], np.s_[:2]), (np.s_[-2:], np.s_[:2]))]
    m += [z[r, c][z[r, c] > 0].mean() for r, c in ((np.s_[:2], np.s_[-2:]), (np.s_[-2:], np.s_[-2:]))]
    u, v = (np.arange(h) / (h - 1))[:, None], (np.arange(w) / (w - 1))[None, :]
    bg = (m[0] * (1 - u) + m[1] * u) * (1 - v) + (m[2] * (1 - u) + m[3] * u) * v
    return (np.abs(bg - z) > threshold) & (z != 0)


@pytest.mark.parametrize("category", s3.BUILTIN3D_CATEGORIES)
def test_object_stands_proud_and_corners_are_plane(category, renders):
    for seed in SEEDS:
        for kind in ("good",) + s3.DEFECT_KINDS_3D[category]:
            rgb, xyz, mask = renders[category, kind, seed]
            inner, corners = _heights_over_corner_plane(xyz)
            assert corners.max() < 1e-3, (kind, seed)  # the corners are the plane (noise 0.15 mm)
            assert inner.max() > 0.0115, (kind, seed)  # the object stands about 12 mm proud or more
            fg = _ast_foreground(xyz[..., 2])
            assert fg.mean() > 0.15 and not fg[:8, :8].any() and not fg[-8:, -8:].any()
            if kind != "hole":  # AST keeps the whole defect in its foreground
                assert fg[mask & (xyz != 0).any(-1)].all(), (kind, seed)


def test_geometric_statistic_separates_what_rgb_cannot(renders):
    """A reference-free statistic: the median |z - quadratic fitted on a ring around the mask| inside
    the mask, on the defective sample and on its good twin (same seed, same region)."""

    def stat(values, valid, mask):
        ring = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(mask, iterations=2) & valid
        r, c = np.nonzero(ring)
        design = lambda r, c: np.stack([np.ones_like(r), r, c, r * r, r * c, c * c], -1).astype(np.float64)
        coef = np.linalg.lstsq(design(r, c), values[ring], rcond=None)[0]
        inside = mask & valid
        r, c = np.nonzero(inside)
        return np.median(np.abs(values[inside] - design(r, c) @ coef))

    for c in s3.BUILTIN3D_CATEGORIES:
        for seed in SEEDS:
            rgb0, xyz0, _ = renders[c, "good", seed]
            for kind in s3.GEOMETRY_KINDS_3D:
                rgb, xyz, mask = renders[c, kind, seed]
                valid = (xyz != 0).any(-1) & (xyz0 != 0).any(-1)
                defective, good = stat(xyz[..., 2], valid, mask), stat(xyz0[..., 2], valid, mask)
                assert good < 0.8e-3 < 1.2e-3 < defective, (c, kind, seed, good, defective)
                grey, grey0 = rgb.astype(float).mean(-1), rgb0.astype(float).mean(-1)
                assert stat(grey, valid, mask) == stat(grey0, valid, mask)


def test_seed_forms_and_scale(renders):
    # A generator: the clean scene draws first, so equal states give the same clean scene.
    g_rgb, g_xyz, _ = s3.render_sample3d("bun", "good", np.random.default_rng(5), SIZE)
    d_rgb, d_xyz, d_mask = s3.render_sample3d("bun", "cut", np.random.default_rng(5), SIZE)
    assert d_rgb.tobytes() == g_rgb.tobytes() and d_mask.any() and not np.array_equal(d_xyz, g_xyz)
    # A sequence seed, twice: identical.
    a, b = s3.render_sample3d("plate", "stain", [3, 4], SIZE), s3.render_sample3d("plate", "stain", [3, 4], SIZE)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    # Good samples vary.
    assert np.abs(renders["puck", "good", 0][0].astype(int) - renders["puck", "good", 1][0]).mean() > 2
    # f scales with the size: the same scene at twice the resolution.
    small = _ast_foreground(renders["plate", "good", 0][1][..., 2]).mean()
    big = _ast_foreground(s3.render_sample3d("plate", "good", 0, 2 * SIZE)[1][..., 2]).mean()
    assert abs(small - big) < 0.01


# ----------------------------------------------------------------------------
# Writing: determinism, reuse, atomicity


def test_deterministic_bytes(tmp_path, small_root):
    again = s3.ensure_builtin3d(tmp_path / "again", ["bun"], num_workers=1, **SMALL)
    assert _digest(again, "bun") == _digest(small_root, "bun")


def test_reuse_and_regenerate(tmp_path, monkeypatch):
    root = s3.ensure_builtin3d(tmp_path / "b", ["puck"], **SMALL)
    cat = root / "puck"
    stamps = {p: p.stat().st_mtime_ns for p in cat.rglob("*")}

    def fail(*a, **k):
        raise AssertionError("should have been reused")

    monkeypatch.setattr(s3, "_write_category", fail)
    assert s3.ensure_builtin3d(root, ["puck"], **SMALL) == root  # complete: reused
    monkeypatch.undo()
    assert {p: p.stat().st_mtime_ns for p in cat.rglob("*")} == stamps
    # A missing file, other counts, another size or another format version: regenerated.
    (cat / "test" / "hole" / "xyz" / "000.tiff").unlink()
    s3.ensure_builtin3d(root, ["puck"], **SMALL)
    assert (cat / "test" / "hole" / "xyz" / "000.tiff").is_file()
    s3.ensure_builtin3d(root, ["puck"], **{**SMALL, "n_validation": 2})
    assert len(list((cat / "validation" / "good" / "xyz").iterdir())) == 2
    assert json.loads((cat / s3.MANIFEST).read_text())["files"]["validation/good/rgb"] == 2
    s3.ensure_builtin3d(root, ["puck"], **{**SMALL, "size": 64})
    assert tifffile.imread(cat / "train" / "good" / "xyz" / "000.tiff").shape == (64, 64, 3)
    monkeypatch.setattr(s3, "FORMAT_VERSION", s3.FORMAT_VERSION + 1)
    s3.ensure_builtin3d(root, ["puck"], **SMALL)
    assert json.loads((cat / s3.MANIFEST).read_text())["spec"]["format_version"] == s3.FORMAT_VERSION
    assert sorted(p.name for p in root.iterdir()) == ["puck"]  # no temporary folders left


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch, workers):
    root = tmp_path / "b"
    calls = []
    real = s3.render_sample3d

    def flaky(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption") if workers == 1 else RuntimeError("simulated failure")
        return real(*args)

    monkeypatch.setattr(s3, "render_sample3d", flaky)
    with pytest.raises(KeyboardInterrupt if workers == 1 else RuntimeError, match="simulated"):
        s3.ensure_builtin3d(root, ["plate"], num_workers=workers, **SMALL)
    assert list(root.iterdir()) == []  # neither the category nor a temporary folder


def test_incomplete_temp_dir_and_foreign_folder(tmp_path):
    root = tmp_path / "b"
    tmp = root / ".bun.tmp-interrupted" / "train" / "good" / "rgb"
    tmp.mkdir(parents=True)
    (tmp / "000.png").write_bytes(b"half")
    s3.ensure_builtin3d(root, ["bun"], **SMALL)
    assert (root / "bun" / s3.MANIFEST).is_file()
    (tmp_path / "c" / "puck" / "train").mkdir(parents=True)
    with pytest.raises(
        DatasetError, match=re.escape(str(tmp_path / "c" / "puck")) + ".*not written by ensure_builtin3d"
    ):
        s3.ensure_builtin3d(tmp_path / "c", ["puck"], **SMALL)


def test_default_root_and_bad_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXFLOW_AD_DATA3D", str(tmp_path / "here"))
    assert s3.default_root3d() == tmp_path / "here"
    monkeypatch.delenv("JAXFLOW_AD_DATA3D")
    assert str(s3.default_root3d()).endswith(".cache/jaxflow_ad/builtin3d")
    bad = [
        (dict(categories=["bagel"]), "Unknown built-in 3-D category 'bagel'"),
        (dict(n_train=0), "n_train must be an int in \\[1, 999\\]"),
        (dict(n_validation=-1), "n_validation"),
        (dict(n_test_per_defect=1.5), "n_test_per_defect"),
        (dict(n_test_good=0, n_test_per_defect=0), "cannot both be 0"),
        (dict(size=32), "size must be an int in \\[64, 2048\\]"),
        (dict(size=96.0), "size must be an int"),
        (dict(num_workers=0), "num_workers"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            s3.ensure_builtin3d(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="kind 'scratch' is neither 'good' nor one of 'puck'"):
        s3.render_sample3d("puck", "scratch", 0, SIZE)
    with pytest.raises(ValueError, match="Unknown built-in 3-D category"):
        s3.render_sample3d("cookie", "good", 0, SIZE)
    with pytest.raises(ValueError, match="size"):
        s3.render_sample3d("puck", "good", 0, 10)
    with pytest.raises(ValueError, match="split must be one of"):
        s3.sample_seed("puck", "val", "good", 0)
