"""The MVTec 3D-AD reader (data.layout=mvtec3d) on tiny categories in the archive's exact layout."""

import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from jaxflow_ad.data import LAYOUTS, DatasetError, get_reader, mvtec3d, pointcloud
from jaxflow_ad.data.resize import resize_image

# Native size of the fixtures: taller than wide, like tire (600 W x 800 H).
H, W = 20, 16
DEFECTS = {"contamination": 2, "cut": 1}  # per defect folder, the number of samples
# Mask value of each defect folder: 255 - k, as in the archive (tire: contamination 255, cut 254, hole 253).
VALUES = {"contamination": 255, "cut": 254, "hole": 253}


def cloud(seed: int) -> np.ndarray:
    """float32 [H, W, 3]: a tilted plane ~0.4 m away with a bump, plus missing points of each kind."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    z = 0.4 + 0.001 * u + 0.0005 * v + 0.01 * ((u - 8) ** 2 + (v - 10) ** 2 < 16) + rng.normal(0, 1e-4, (H, W))
    xyz = np.stack([(u - W / 2) * 1e-3, (v - H / 2) * 1e-3, z], -1).astype(np.float32)
    xyz[0, 0] = np.nan  # NaN point
    xyz[0, 1] = (np.nan, 0.1, 0.4)  # one NaN coordinate: missing too
    xyz[1, 2:5] = 0.0  # (0, 0, 0) padding
    xyz[2, 3] = (0.0, 0.0, 0.4)  # one zero coordinate is a real measurement
    return xyz


def write_cloud(path, xyz) -> None:
    tifffile.imwrite(path, xyz, photometric="rgb")


def gt(index: int, value: int) -> Image.Image:
    m = np.zeros((H, W), np.uint8)
    m[2 + index : 9 + index, 3:10] = value
    return Image.fromarray(m, "L")


def write_mvtec3d(root, category="tire", *, n_train=2, n_val=2, n_good=2, defects=None, seed=0):
    """``root/category`` in MVTec 3D-AD's layout: rgb/xyz per sample, gt/ in every test folder (zeros
    for good), masks valued 255 - k, class_ids.json and calibration/ next to the splits."""
    defects = DEFECTS if defects is None else defects
    rng = np.random.default_rng(seed)
    cat = root / category
    folders = [("train", "good", n_train), ("validation", "good", n_val), ("test", "good", n_good)]
    folders += [("test", d, n) for d, n in defects.items()]
    k = 0
    for split, defect, n in folders:
        base = cat / split / defect
        for sub in ("rgb", "xyz") + (("gt",) if split == "test" else ()):
            (base / sub).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "RGB").save(base / "rgb" / f"{i:03d}.png")
            write_cloud(base / "xyz" / f"{i:03d}.tiff", cloud(seed * 100 + k))
            k += 1
            if split == "test":
                gt(i, 0 if defect == "good" else VALUES[defect]).save(base / "gt" / f"{i:03d}.png")
    (cat / "calibration").mkdir()
    (cat / "calibration" / "camera_parameters.json").write_text("{}")
    ids = {"0": "good", **{str(v): d for d, v in VALUES.items()}}
    (cat / "class_ids.json").write_text(json.dumps(ids))
    (root / "license.txt").write_text("fixture\n")
    return root


@pytest.fixture
def root(tmp_path):
    return write_mvtec3d(tmp_path / "mvtec_3d")


def expected_xyz(path, size) -> np.ndarray:
    xyz = tifffile.imread(path)
    xyz = np.where(pointcloud.valid_points(xyz)[..., None], xyz, 0).astype(np.float32)
    return pointcloud.resize_nearest(xyz, size)


def test_registered():
    r = get_reader("mvtec3d")
    assert r is LAYOUTS["mvtec3d"]
    assert r.modalities == ("image", "xyz", "depth", "foreground") and set(r.spatial) == set(r.modalities)
    assert r.splits == ("train", "validation", "test")
    assert r.options == ("cloud_size", "clean", "depth", "seed", "cache_dir")
    assert r.load_split is mvtec3d.load_split and r.scan is mvtec3d.scan_split


def test_train_split(root):
    s = mvtec3d.load_split(root, "tire", "train", 12, num_workers=2)
    assert len(s) == 2 and s.split == "train" and s.category == "tire"
    assert sorted(s.samples) == ["image", "xyz"]
    assert s.images.shape == (2, 12, 12, 3) and s.images.dtype == np.uint8
    assert s.samples["xyz"].shape == (2, 12, 12, 3) and s.samples["xyz"].dtype == np.float32
    assert s.labels.tolist() == [0, 0] and s.defect_types == ["good", "good"]
    assert all(m.shape == (H, W) and not m.any() for m in s.masks) and s.has_masks
    base = root / "tire" / "train" / "good"
    assert s.paths == [str(base / "rgb" / f"{i:03d}.png") for i in range(2)]
    for i in range(2):
        # the RGB exactly as the MVTec AD reader resizes it; the cloud squashed to the same square
        want = resize_image(Image.open(base / "rgb" / f"{i:03d}.png").convert("RGB"), 12)
        np.testing.assert_array_equal(s.images[i], want)
        np.testing.assert_array_equal(s.samples["xyz"][i], expected_xyz(base / "xyz" / f"{i:03d}.tiff", 12))
    assert s.files == [str(base / d / f"{i:03d}.{e}") for i in range(2) for d, e in (("rgb", "png"), ("xyz", "tiff"))]
    assert len(s.file_stats) == len(s.files)


def test_missing_points_become_exact_zeros(root):
    s = mvtec3d.load_split(root, "tire", "train", None)  # native size: no resize, every point kept
    xyz = s.samples["xyz"][0]
    assert xyz.shape == (H, W, 3) and s.images.shape == (2, H, W, 3)
    assert np.isfinite(s.samples["xyz"]).all()
    np.testing.assert_array_equal(xyz[0, 0], 0)
    np.testing.assert_array_equal(xyz[0, 1], 0)  # a single NaN coordinate zeroes the point
    np.testing.assert_array_equal(xyz[1, 2:5], 0)
    assert not np.signbit(xyz[0, :2]).any()  # +0.0, not -0.0 or NaN
    np.testing.assert_array_equal(xyz[2, 3], np.float32([0, 0, 0.4]))  # one zero coordinate is kept
    raw = cloud(0)
    np.testing.assert_array_equal(xyz[3:], raw[3:])


def test_test_split_masks(root):
    s = mvtec3d.load_split(root, "tire", "test", 8)
    assert s.defect_types == ["contamination", "contamination", "cut", "good", "good"]
    assert s.labels.tolist() == [1, 1, 1, 0, 0]
    # 255 - k binarised with > 0; good gt files are read and all zero
    for i, m in enumerate(s.masks):
        want = np.asarray(gt([0, 1, 0][i], 1)) > 0 if i < 3 else np.zeros((H, W), bool)
        np.testing.assert_array_equal(m, want)
    assert np.asarray(Image.open(root / "tire/test/cut/gt/000.png")).max() == 254
    good_gt = root / "tire" / "test" / "good" / "gt" / "000.png"
    assert str(good_gt) in s.files and str(root / "tire/test/cut/xyz/000.tiff") in s.files
    assert s.samples["xyz"].shape == (5, 8, 8, 3)


def test_gt_253(tmp_path):
    root = write_mvtec3d(tmp_path, defects={"hole": 1})
    s = mvtec3d.load_split(root, "tire", "test", 8)
    assert s.defect_types == ["good", "good", "hole"]
    np.testing.assert_array_equal(s.masks[2], np.asarray(gt(0, 1)) > 0)


def test_good_folder_without_gt(root):
    shutil.rmtree(root / "tire" / "test" / "good" / "gt")
    s = mvtec3d.load_split(root, "tire", "test", 8)
    assert not s.masks[3].any() and s.labels.tolist() == [1, 1, 1, 0, 0]


def test_validation_split_and_scan(root):
    s = get_reader("mvtec3d").load_split(root, "tire", "validation", 8)
    assert s.split == "validation" and len(s) == 2 and s.labels.tolist() == [0, 0]
    assert all("/validation/good/rgb/" in p for p in s.paths)
    recs = mvtec3d.scan_split(root, "tire", "test")
    assert [(r.defect_type, r.stem) for r in recs][:3] == [
        ("contamination", "000"),
        ("contamination", "001"),
        ("cut", "000"),
    ]
    assert recs[0].xyz_path == root / "tire/test/contamination/xyz/000.tiff"
    assert mvtec3d.list_categories(root) == ["tire"]


def test_cloud_size(root):
    s = mvtec3d.load_split(root, "tire", "test", 12, cloud_size=6)
    assert s.images.shape == (5, 12, 12, 3) and s.samples["xyz"].shape == (5, 6, 6, 3)
    path = root / "tire" / "test" / "cut" / "xyz" / "000.tiff"
    np.testing.assert_array_equal(s.samples["xyz"][2], expected_xyz(path, 6))
    # with image_size=None the cloud_size still applies
    s = mvtec3d.load_split(root, "tire", "train", None, cloud_size=5)
    assert s.images.shape == (2, H, W, 3) and s.samples["xyz"].shape == (2, 5, 5, 3)


def test_fingerprint_covers_the_tiffs(root):
    s = mvtec3d.load_split(root, "tire", "train", 8)
    before = s.fingerprint()
    path = root / "tire" / "train" / "good" / "xyz" / "001.tiff"
    st = os.stat(path)
    write_cloud(path, cloud(99))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ".*changed on disk"):
        s.fingerprint()
    again = mvtec3d.load_split(root, "tire", "train", 8)
    assert again.fingerprint() != before
    np.testing.assert_array_equal(again.samples["xyz"][1], expected_xyz(path, 8))


def test_warns_about_an_empty_defect_mask_only(root, caplog):
    gt(0, 0).save(root / "tire" / "test" / "cut" / "gt" / "000.png")
    with caplog.at_level(logging.WARNING, logger="jaxflow_ad"):
        mvtec3d.load_split(root, "tire", "test", 8)
    msgs = [r.getMessage() for r in caplog.records if "all-zero mask" in r.getMessage()]
    assert len(msgs) == 1 and "1 defect image(s)" in msgs[0] and "cut/rgb/000.png" in msgs[0]


# ----------------------------------------------------------------------------
# Broken datasets: one DatasetError naming the file and the fix


def _cat(root):
    return root / "tire"


def _rm(path):
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    return path


def _garbage(path):
    path.write_bytes(b"not an image at all")
    return path


def _resized_gt(root):
    p = _cat(root) / "test/cut/gt/000.png"
    Image.fromarray(np.zeros((H, W + 1), np.uint8), "L").save(p)
    return p


def _nonzero_good_gt(root):
    p = _cat(root) / "test/good/gt/001.png"
    gt(0, 255).save(p)
    return p


def _tiff(root, array):
    p = _cat(root) / "test/cut/xyz/000.tiff"
    tifffile.imwrite(p, array, photometric="minisblack", planarconfig="contig" if array.ndim == 3 else None)
    return p


def _empty_train(root):
    for sub in ("rgb", "xyz"):
        for f in (_cat(root) / "train/good" / sub).iterdir():
            f.unlink()
    return _cat(root) / "train"


def _save(image, path):
    image.save(path)
    return path


def _touch(path):
    path.write_bytes(b"")
    return path


def _mkdir(path):
    path.mkdir()
    return path


BROKEN = {
    "missing split": ("test", lambda r: _rm(_cat(r) / "validation"), "validation", "Missing folder"),
    "file in split": ("test", lambda r: _touch(_cat(r) / "test" / "notes.txt"), "test", "Unexpected file"),
    "defect in train": ("train", lambda r: _mkdir(_cat(r) / "train" / "cut"), "train", "holds only defect-free"),
    "extra folder": ("test", lambda r: _mkdir(_cat(r) / "test/cut/normals"), "test", "holds only the folders"),
    "no xyz folder": ("train", lambda r: _rm(_cat(r) / "train/good/xyz"), "train", "Missing folder"),
    "no gt folder": ("test", lambda r: _rm(_cat(r) / "test/cut/gt"), "test", "Missing folder"),
    "rgb without xyz": ("test", lambda r: _rm(_cat(r) / "test/cut/xyz/000.tiff"), "test", "No point cloud"),
    "xyz without rgb": ("test", lambda r: _rm(_cat(r) / "test/cut/rgb/000.png"), "test", "has no image"),
    "xyz wrong ext": ("test", lambda r: _touch(_cat(r) / "test/cut/xyz/001.npy"), "test", "Unexpected file"),
    "rgb without gt": ("test", lambda r: _rm(_cat(r) / "test/cut/gt/000.png"), "test", "No mask for the defect image"),
    "good rgb without gt": ("test", lambda r: _rm(_cat(r) / "test/good/gt/001.png"), "test", "No mask for the image"),
    "gt without rgb": ("test", lambda r: _save(gt(0, 255), _cat(r) / "test/cut/gt/007.png"), "test", "has no image"),
    "empty split": ("train", _empty_train, "train", "is empty"),
    "unreadable rgb": ("test", lambda r: _garbage(_cat(r) / "test/cut/rgb/000.png"), "test", "Cannot read the image"),
    "unreadable gt": ("test", lambda r: _garbage(_cat(r) / "test/cut/gt/000.png"), "test", "Cannot read the mask"),
    "gt size": ("test", _resized_gt, "test", "A mask must have its image's size"),
    "good gt not zero": ("test", _nonzero_good_gt, "test", "defect-free image"),
    "unreadable tiff": ("test", lambda r: _garbage(_cat(r) / "test/cut/xyz/000.tiff"), "test", "Cannot read the point"),
    "integer tiff": ("test", lambda r: _tiff(r, np.ones((H, W, 3), np.uint16)), "test", "not an H x W x 3 floating"),
    "2-d tiff": ("test", lambda r: _tiff(r, np.ones((H, W), np.float32)), "test", "not an H x W x 3 floating"),
    "4-channel tiff": ("test", lambda r: _tiff(r, np.ones((H, W, 4), np.float32)), "test", "not an H x W x 3"),
    "cloud size": ("test", lambda r: _tiff(r, cloud(0)[:, :-1]), "test", "one point per image pixel"),
    "no valid point": ("test", lambda r: _tiff(r, np.zeros((H, W, 3), np.float32)), "test", "has no valid point"),
    "nan cloud": ("test", lambda r: _tiff(r, np.full((H, W, 3), np.nan, np.float32)), "test", "has no valid point"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken(root, case):
    split, break_it, _, fragment = BROKEN[case]
    path = break_it(root)
    with pytest.raises(DatasetError, match=re.escape(fragment)) as e:
        mvtec3d.load_split(root, "tire", split if case != "missing split" else "validation", 8)
    assert str(path) in str(e.value), str(e.value)
    fix = r"\b(add|move|remove|replace|restore|put|check|zero|keep|pass)\b"
    assert re.search(fix, str(e.value), re.IGNORECASE), str(e.value)


def test_scan_finds_layout_errors_without_pixels(root):
    p = _rm(_cat(root) / "test/contamination/xyz/001.tiff")
    with pytest.raises(DatasetError, match="No point cloud for the image " + re.escape(str(p.parent.parent))):
        get_reader("mvtec3d").scan(root, "tire", "test")
    _garbage(_cat(root) / "train/good/xyz/000.tiff")
    assert len(mvtec3d.scan_split(root, "tire", "train")) == 2  # scanning reads no pixel


@pytest.mark.parametrize(
    "options, key",
    [
        ({"cloud_size": -1}, "data.mvtec3d.cloud_size=-1"),
        ({"cloud_size": 8.0}, "data.mvtec3d.cloud_size=8.0"),
        ({"clean": "yes"}, "data.mvtec3d.clean='yes'"),
        ({"depth": 1}, "data.mvtec3d.depth=1"),
        ({"seed": True}, "data.mvtec3d.seed=True"),
        ({"size": 8}, "data.mvtec3d.size"),
    ],
)
def test_bad_options(root, options, key):
    with pytest.raises(DatasetError, match=re.escape(key)):
        mvtec3d.load_split(root, "tire", "train", 8, **options)
    with pytest.raises(DatasetError, match=re.escape(key)):
        mvtec3d.list_categories(root, **options)


# ----------------------------------------------------------------------------
# The options that call pointcloud's cleaning and depth branch (written by another module)


def test_clean_option(root, monkeypatch):
    calls = []
    real = pointcloud.clean_cloud

    def spy(xyz, seed):
        calls.append((xyz.shape, seed, bool(np.isfinite(xyz).all())))
        return real(xyz, seed=seed)

    monkeypatch.setattr(mvtec3d, "clean_cloud", spy)
    s = mvtec3d.load_split(root, "tire", "train", 8, clean=True, seed=3, num_workers=1)
    # cleaned at the native size, after the NaN points were zeroed, with the configured seed
    assert calls == [((H, W, 3), 3, True)] * 2
    assert s.samples["xyz"].shape == (2, 8, 8, 3) and np.isfinite(s.samples["xyz"]).all()
    plain = mvtec3d.load_split(root, "tire", "train", 8)
    cleaned = (s.samples["xyz"] == 0).all(-1)
    assert cleaned.sum() >= (plain.samples["xyz"] == 0).all(-1).sum()


def test_cache_dir_keeps_cleaning_and_depth_per_file(root, tmp_path, monkeypatch):
    calls = []
    real = pointcloud.clean_cloud
    monkeypatch.setattr(mvtec3d, "clean_cloud", lambda xyz, seed: calls.append(1) or real(xyz, seed=seed))
    opts = dict(clean=True, depth=True, cache_dir=str(tmp_path / "cache"), num_workers=1)
    first = mvtec3d.load_split(root, "tire", "train", 8, **opts)
    again = mvtec3d.load_split(root, "tire", "train", 8, **opts)
    assert len(calls) == 2 and len(list((tmp_path / "cache").glob("*.npz"))) == 2  # computed once per file
    for k in ("xyz", "depth", "foreground"):
        np.testing.assert_array_equal(first.samples[k], again.samples[k])
        assert first.samples[k].dtype == again.samples[k].dtype
    mvtec3d.load_split(root, "tire", "train", 8, **{**opts, "seed": 1})  # another setting: computed again
    assert len(calls) == 4
    p = _cat(root) / "train/good/xyz/000.tiff"
    xyz = tifffile.imread(p)
    tifffile.imwrite(p, xyz * np.float32(1.01), photometric="rgb")  # a rewritten file: computed again
    os.utime(p, ns=(10**9, 10**9))
    mvtec3d.load_split(root, "tire", "train", 8, **opts)
    assert len(calls) == 5


def test_fingerprint_follows_the_options_but_not_the_cache_dir(root, tmp_path):
    fp = lambda **o: mvtec3d.load_split(root, "tire", "train", 8, **o).fingerprint()
    plain = fp()
    assert fp(cloud_size=0, cache_dir="") == plain  # a config's spelling of "unset"
    assert fp(cache_dir=str(tmp_path / "c")) == plain
    assert len({plain, fp(clean=True), fp(depth=True), fp(cloud_size=4), fp(clean=True, seed=1)}) == 5


def expected_depth(path, size):
    xyz = tifffile.imread(path)
    depth, fg = pointcloud.depth_branch(np.where(pointcloud.valid_points(xyz)[..., None], xyz, 0))
    return pointcloud.resize_bilinear(depth, size), pointcloud.resize_bilinear(fg.astype(np.float32), size) > 0


def test_depth_option(root):
    s = mvtec3d.load_split(root, "tire", "test", 12, cloud_size=8, depth=True)
    assert sorted(s.samples) == ["depth", "foreground", "image", "xyz"]
    assert set(s.samples) <= set(get_reader("mvtec3d").modalities)
    assert s.samples["depth"].shape == (5, 8, 8) and s.samples["depth"].dtype == np.float32
    assert s.samples["foreground"].shape == (5, 8, 8) and s.samples["foreground"].dtype == bool
    # the depth branch runs on the native cloud, then depth and foreground are resized bilinearly
    depth, fg = expected_depth(root / "tire/test/cut/xyz/000.tiff", 8)
    np.testing.assert_array_equal(s.samples["depth"][2], depth)
    np.testing.assert_array_equal(s.samples["foreground"][2], fg)
    assert s.samples["foreground"].any() and np.isfinite(s.samples["depth"]).all()


def test_depth_uses_the_uncleaned_cloud(root):
    both = mvtec3d.load_split(root, "tire", "train", 8, depth=True, clean=True)
    depth = mvtec3d.load_split(root, "tire", "train", 8, depth=True)
    np.testing.assert_array_equal(both.samples["depth"], depth.samples["depth"])
    np.testing.assert_array_equal(both.samples["foreground"], depth.samples["foreground"])


def test_depth_needs_background_corners(root):
    path = root / "tire/train/good/xyz/001.tiff"
    xyz = cloud(1)
    xyz[:6, :6] = 0  # like a copy whose plane was removed in place: no background left in a corner
    write_cloud(path, xyz)
    assert len(mvtec3d.load_split(root, "tire", "train", 8)) == 2
    with pytest.raises(DatasetError, match="Cannot compute the depth input of the point cloud " + re.escape(str(path))):
        mvtec3d.load_split(root, "tire", "train", 8, depth=True)
