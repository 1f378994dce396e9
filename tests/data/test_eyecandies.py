"""The Eyecandies reader (data.layout=eyecandies) and its converter, on tiny categories in the Pipelime layout."""

import math
import re

import numpy as np
import pytest
from PIL import Image

from jaxflow_ad.data import LAYOUTS, DatasetError, eyecandies, get_reader, mvtec3d

# Native size: not square (the real images are 512x512), so a swapped u/v or W/H in K fails.
H, W = 16, 20
F = 711.11
# Test samples: ID -> (anomalous, the part masks that are non-empty). "03" is anomalous with empty part masks.
TEST = {"00": (0, ()), "01": (1, ("bumps",)), "02": (1, ("dents", "colors")), "03": (1, ()), "04": (0, ())}
RANGE = (0.35, 0.45)  # info_depth normalization, metres


def known_pose() -> np.ndarray:
    """A rotation of 30 degrees about x then 20 about z, and a translation."""
    a, b = math.radians(30), math.radians(20)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    rz = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, :3] = rz @ rx
    pose[:3, 3] = (0.05, -0.1, 0.3)
    return pose


def _mask(sid: str, part: str | None = None) -> np.ndarray:
    """0/255 uint8 [H, W]: the union (part None) or one part mask of a test sample."""
    anomalous, parts = TEST.get(sid, (0, ()))
    m = np.zeros((H, W), np.uint8)
    boxes = {"bumps": (2, 6, 3, 8), "dents": (8, 12, 2, 5), "colors": (9, 14, 10, 18), "normals": (0, 3, 15, 19)}
    for p in parts if part is None else [part] if part in parts else []:
        r0, r1, c0, c1 = boxes[p]
        m[r0:r1, c0:c1] = 255
    if part is None and anomalous and not parts:
        m[5:7, 5:7] = 255  # "03": a mask but no part mask
    return m


def write_sample(data, sid: str, rng, *, pose=None, split="train", depth_range=RANGE):
    """The 17 files of one sample, as the release stores them."""
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "RGB").save(data / f"{sid}_image_{i}.png")
    png = rng.integers(1000, 65000, (H, W)).astype(np.uint16)
    Image.fromarray(png).save(data / f"{sid}_depth.png")
    (data / f"{sid}_info_depth.yaml").write_text(
        f"normalization:\n  max: {depth_range[1]!r}\n  min: {depth_range[0]!r}\n"
    )
    np.savetxt(data / f"{sid}_pose.txt", np.eye(4) if pose is None else pose)
    anomalous = TEST[sid][0] if split == "test_public" else 0
    (data / f"{sid}_metadata.yaml").write_text(f"anomalous: {anomalous}\nid: {sid}\n")
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "RGB").save(data / f"{sid}_normals.png")
    (data / f"{sid}_obj_params.yaml").write_text("color: [0.1, 0.2, 0.3]\n")
    test = split == "test_public"
    Image.fromarray(_mask(sid) if test else np.zeros((H, W), np.uint8), "L").save(data / f"{sid}_mask.png")
    for part in eyecandies.PARTS:
        m = _mask(sid, part) if test else np.zeros((H, W), np.uint8)
        Image.fromarray(m, "L").save(data / f"{sid}_{part}_mask.png")
    return png


def write_eyecandies(root, category="CandyCane", *, n_train=2, n_val=2, seed=0):
    """``root/category`` with train (3-digit IDs), val (2-digit IDs) and test_public (``TEST``); the first
    sample of each split has the identity pose, the others ``known_pose()``."""
    rng = np.random.default_rng(seed)
    for split, ids in (
        ("train", [f"{i:03d}" for i in range(n_train)]),
        ("val", [f"{i:02d}" for i in range(n_val)]),
        ("test_public", list(TEST)),
    ):
        data = root / category / split / "data"
        data.mkdir(parents=True)
        for k, sid in enumerate(ids):
            write_sample(data, sid, rng, pose=np.eye(4) if k == 0 else known_pose(), split=split)
    return root


@pytest.fixture
def root(tmp_path):
    return write_eyecandies(tmp_path / "Eyecandies")


def metric_depth(data, sid):
    png = np.asarray(Image.open(data / f"{sid}_depth.png")).astype(np.float64)
    return png / 65535 * (RANGE[1] - RANGE[0]) + RANGE[0]


def test_registered():
    r = get_reader("eyecandies")
    assert r is LAYOUTS["eyecandies"] and r.splits == ("train", "validation", "test")
    assert r.modalities == LAYOUTS["mvtec3d"].modalities and r.spatial == LAYOUTS["mvtec3d"].spatial
    assert r.options == ("cloud_size", "clean", "depth", "seed", "cache_dir", "image_index")


def test_identity_pose_is_the_pinhole_back_projection(root):
    """pose = I: x = (u - W/2) d / f, y = (v - H/2) d / f, z = d."""
    data = root / "CandyCane" / "train" / "data"
    s = eyecandies.load_split(root, "CandyCane", "train", None)
    xyz = s.samples["xyz"][0]
    assert xyz.shape == (H, W, 3) and xyz.dtype == np.float32
    d = metric_depth(data, "000")
    v, u = np.mgrid[0:H, 0:W]
    np.testing.assert_allclose(xyz[..., 2], d, rtol=1e-6)
    np.testing.assert_allclose(xyz[..., 0], (u - W / 2) * d / F, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(xyz[..., 1], (v - H / 2) * d / F, rtol=1e-5, atol=1e-9)
    assert xyz[3, 15, 0] > 0 and xyz[3, 15, 1] < 0  # column 15 is right of centre, row 3 above it


def test_known_pose_against_the_m3dm_formula(root):
    """sample 001: d * inv(K4 @ pose) @ [u, v, 1, 1/d], computed per pixel as M3DM's loop does, and equal
    to the pose's rigid inverse applied to the identity-pose points."""
    data = root / "CandyCane" / "train" / "data"
    s = eyecandies.load_split(root, "CandyCane", "train", None)
    xyz = s.samples["xyz"][1]
    pose = np.loadtxt(data / "001_pose.txt")
    np.testing.assert_allclose(pose, known_pose())
    d = metric_depth(data, "001")
    k4 = np.array([[F, 0, W / 2, 0], [0, F, H / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    inv = np.linalg.inv(k4 @ pose)
    for j, i in [(0, 0), (0, W - 1), (H - 1, 0), (7, 13), (H - 1, W - 1)]:
        p = d[j, i] * (inv @ np.array([i, j, 1, 1 / d[j, i]]))
        np.testing.assert_allclose(xyz[j, i], p[:3], rtol=1e-6, err_msg=f"pixel row {j} col {i}")
        camera = np.array([(i - W / 2) * d[j, i] / F, (j - H / 2) * d[j, i] / F, d[j, i]])
        r, t = pose[:3, :3], pose[:3, 3]
        np.testing.assert_allclose(xyz[j, i], r.T @ (camera - t), rtol=1e-5)


def test_depth_to_xyz_zero_depth_is_missing():
    depth = np.full((H, W), 0.4)
    depth[2, 3] = 0.0
    depth[4, 5] = np.nan
    xyz = eyecandies.depth_to_xyz(depth, known_pose())
    np.testing.assert_array_equal(xyz[2, 3], 0)
    np.testing.assert_array_equal(xyz[4, 5], 0)
    assert np.isfinite(xyz).all() and (np.abs(xyz[0, 0]) > 0).any()
    np.testing.assert_allclose(eyecandies.decode_depth(np.array([0, 65535]), 0.3, 0.5), [0.3, 0.5])


def test_train_split(root):
    s = eyecandies.load_split(root, "CandyCane", "train", 12)
    data = root / "CandyCane" / "train" / "data"
    assert s.paths == [str(data / "000_image_4.png"), str(data / "001_image_4.png")]
    assert s.images.shape == (2, 12, 12, 3) and s.samples["xyz"].shape == (2, 12, 12, 3)
    assert sorted(s.samples) == ["image", "xyz"]
    assert s.labels.tolist() == [0, 0] and s.defect_types == ["good", "good"]
    assert all(m.shape == (H, W) and not m.any() for m in s.masks)
    for item in ("depth.png", "info_depth.yaml", "pose.txt", "metadata.yaml", "image_4.png"):
        assert str(data / f"001_{item}") in s.files
    assert str(data / "001_mask.png") not in s.files  # train masks are not read
    assert len(s.files) == len(s.file_stats)
    assert [k[2] for k in s.keys] == ["000_image_4", "001_image_4"]


def test_split_mapping(root):
    r = get_reader("eyecandies")
    cat = root / "CandyCane"
    val = r.load_split(root, "CandyCane", "validation", 8)
    assert val.split == "validation" and val.paths == [
        str(cat / "val" / "data" / f"{i:02d}_image_4.png") for i in range(2)
    ]
    test = r.load_split(root, "CandyCane", "test", 8)
    assert test.split == "test" and all("/test_public/data/" in p for p in test.paths)
    assert [rec.stem for rec in r.scan(root, "CandyCane", "test")] == list(TEST)
    assert [rec.defect_type for rec in r.scan(root, "CandyCane", "test")] == ["good", "bad", "bad", "bad", "good"]
    assert r.list_categories(root) == ["CandyCane"]
    with pytest.raises(DatasetError, match="split must be one of"):
        r.scan(root, "CandyCane", "test_public")


def test_labels_masks_and_defect_types(root):
    s = eyecandies.load_split(root, "CandyCane", "test", 8)
    assert s.labels.tolist() == [0, 1, 1, 1, 0]
    assert s.defect_types == ["good", "bumps", "dents+colors", "bad", "good"]
    for sid, m in zip(TEST, s.masks):
        np.testing.assert_array_equal(m, _mask(sid) > 0)
    assert not s.masks[0].any() and s.masks[3].any()
    data = root / "CandyCane" / "test_public" / "data"
    assert str(data / "02_dents_mask.png") in s.files and str(data / "00_mask.png") in s.files


def test_image_index_and_cloud_size(root):
    s = eyecandies.load_split(root, "CandyCane", "test", 10, image_index=5, cloud_size=4)
    assert s.paths[0].endswith("/00_image_5.png")
    assert s.images.shape == (5, 10, 10, 3) and s.samples["xyz"].shape == (5, 4, 4, 3)
    with pytest.raises(DatasetError, match=re.escape("data.eyecandies.image_index=6")):
        eyecandies.load_split(root, "CandyCane", "test", 10, image_index=6)
    with pytest.raises(DatasetError, match=re.escape("data.eyecandies.light")):
        eyecandies.list_categories(root, light=4)


def test_depth_option(root):
    s = eyecandies.load_split(root, "CandyCane", "validation", 8, depth=True)
    assert s.samples["depth"].shape == (2, 8, 8) and s.samples["foreground"].dtype == bool


def test_to_mvtec3d_round_trip(root, tmp_path):
    dst = eyecandies.to_mvtec3d(root, tmp_path / "as_mvtec3d")
    cat = dst / "CandyCane"
    assert sorted(p.name for p in (cat / "test").iterdir()) == ["bad", "bumps", "dents+colors", "good"]
    assert (cat / "validation" / "good" / "xyz" / "00.tiff").is_file()
    assert not (cat / "train" / "good" / "gt").exists()
    for split in ("train", "validation", "test"):
        a = eyecandies.load_split(root, "CandyCane", split, 8)
        b = mvtec3d.load_split(dst, "CandyCane", split, 8)
        order = np.argsort([k[2].split("_")[0] for k in a.keys])
        again = np.argsort([k[2] for k in b.keys])
        np.testing.assert_array_equal(a.images[order], b.images[again])
        np.testing.assert_array_equal(a.samples["xyz"][order], b.samples["xyz"][again])
        assert [a.defect_types[i] for i in order] == [b.defect_types[i] for i in again]
        for i, j in zip(order, again):
            np.testing.assert_array_equal(a.masks[i], b.masks[j])
    with pytest.raises(DatasetError, match="already exists"):
        eyecandies.to_mvtec3d(root, dst)


# ----------------------------------------------------------------------------
# Broken datasets


def _data(root, split="test_public"):
    return root / "CandyCane" / split / "data"


def _unlink(path):
    path.unlink()
    return path


def _write(path, text):
    path.write_text(text)
    return path


def _save(array, path, mode=None):
    Image.fromarray(array, mode).save(path)
    return path


BROKEN = {
    "no depth": ("test", lambda r: _unlink(_data(r) / "01_depth.png"), "has no 01_depth.png"),
    "no metadata in test": ("test", lambda r: _unlink(_data(r) / "02_metadata.yaml"), "has no 02_metadata.yaml"),
    "8-bit depth": (
        "test",
        lambda r: _save(np.zeros((H, W), np.uint8), _data(r) / "00_depth.png", "L"),
        "not 16-bit grayscale",
    ),
    "depth size": (
        "test",
        lambda r: _save(np.ones((H, W + 2), np.uint16), _data(r) / "00_depth.png"),
        "one value per image pixel",
    ),
    "anomalous in train": (
        "train",
        lambda r: _write(_data(r, "train") / "001_metadata.yaml", "anomalous: 1\n"),
        "holds only normal samples",
    ),
    "bad metadata": ("test", lambda r: _write(_data(r) / "01_metadata.yaml", "anomalous: maybe\n"), "0 or 1"),
    "broken yaml": ("test", lambda r: _write(_data(r) / "01_info_depth.yaml", "normalization: [\n"), "Cannot read"),
    "bad range": ("test", lambda r: _write(_data(r) / "01_info_depth.yaml", "normalization: {min: 1}\n"), "min <="),
    "bad pose": ("test", lambda r: _write(_data(r) / "03_pose.txt", "1 0 0\n0 1 0\n0 0 1\n"), "not a finite 4x4"),
    "singular pose": ("test", lambda r: _write(_data(r) / "03_pose.txt", "0 0 0 0\n" * 4), "singular"),
    "good with a mask": (
        "test",
        lambda r: _save(np.full((H, W), 255, np.uint8), _data(r) / "04_mask.png", "L"),
        "defect-free image",
    ),
    "stray file": ("test", lambda r: _write(_data(r) / "01_notes.txt", "x"), "Unexpected file"),
    "wrong extension": ("test", lambda r: _write(_data(r) / "01_pose.yaml", "x"), "has the extension .txt"),
    "no val": ("validation", lambda r: _unlink_dir(_data(r, "val")), "Missing folder"),
}


def _unlink_dir(path):
    for p in path.iterdir():
        p.unlink()
    path.rmdir()
    return path


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken(root, case):
    split, break_it, fragment = BROKEN[case]
    path = break_it(root)
    with pytest.raises(DatasetError, match=re.escape(fragment)) as e:
        eyecandies.load_split(root, "CandyCane", split, 8)
    msg = str(e.value)
    assert str(path) in msg or path.name in msg, msg
