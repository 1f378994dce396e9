"""Split as a dict of modalities: uint8 storage, take, with_samples, fingerprint."""

import os
import re

import numpy as np
import pytest
from PIL import Image

from jaxflow_ad.data import DatasetError, Split, load_split

from .fixtures import H, W, write_mvtec


@pytest.fixture
def root(tmp_path):
    return write_mvtec(tmp_path / "mvtec")


def _features(n, s):
    """A nested entry like the engine's samples["features"], row i filled with i."""
    rows = np.arange(n, dtype=np.float32)
    return {
        "p2": np.broadcast_to(rows[:, None, None, None], (n, s // 2, s // 2, 4)).copy(),
        "p3": np.broadcast_to(rows[:, None, None, None], (n, s // 4, s // 4, 2)).copy(),
    }


def test_uint8_storage_and_files(root):
    s = load_split(root, "widget", "test", 16)
    assert s.images is s.samples["image"]
    assert s.images.dtype == np.uint8 and s.images.shape == (5, 16, 16, 3)
    assert s.images.nbytes == 5 * 16 * 16 * 3  # one byte per channel, no float copy
    cat = root / "widget"
    masks = [cat / "ground_truth" / d / f"{i:03d}_mask.png" for d, i in (("crack", 0), ("crack", 1), ("scratch", 0))]
    assert set(s.files) == set(s.paths) | {str(m) for m in masks}
    assert len(s.files) == 8 and all(os.path.isfile(f) for f in s.files)
    train = load_split(root, "widget", "train", 16)
    assert train.files == train.paths  # good images have no mask file


def test_take_rows_of_every_modality(root):
    s = load_split(root, "widget", "test", 16)
    s = s.with_samples(
        features=_features(5, 16), xyz=np.arange(5 * 16 * 16 * 3, dtype=np.float32).reshape(5, 16, 16, 3)
    )
    idx = np.array([3, 0, 3])
    b = s.take(idx)
    assert set(b) == {"image", "features", "xyz"} and set(b["features"]) == {"p2", "p3"}
    np.testing.assert_array_equal(b["image"], s.images[[3, 0, 3]])
    np.testing.assert_array_equal(b["xyz"], s.samples["xyz"][[3, 0, 3]])
    for tap, shape in (("p2", (3, 8, 8, 4)), ("p3", (3, 4, 4, 2))):
        assert b["features"][tap].shape == shape
        np.testing.assert_array_equal(b["features"][tap][:, 0, 0, 0], [3, 0, 3])
    # A new dict of new arrays: writing into the batch leaves the split alone.
    b["image"][:] = 0
    b["features"]["p2"][:] = -1
    assert s.images[3].any() and (s.samples["features"]["p2"][3] == 3).all()
    assert s.take(np.array([], dtype=np.int64))["image"].shape == (0, 16, 16, 3)
    assert s.take([])["features"]["p3"].shape == (0, 4, 4, 2)
    with pytest.raises(ValueError, match="1-D integer array"):
        s.take(np.array([0.0, 1.0]))


def test_with_samples_copies_and_checks_rows(root):
    s = load_split(root, "widget", "test", 16)
    depth = np.zeros((5, 16, 16), np.float32)
    t = s.with_samples(depth=depth, features=_features(5, 16))
    assert set(t.samples) == {"image", "depth", "features"}
    assert set(s.samples) == {"image"}  # the original is untouched
    assert t.samples["depth"] is depth and t.images is s.images  # shared, not copied
    assert t.paths == s.paths and t.files == s.files and t.category == s.category and t.split == s.split
    # Replacing an entry.
    flipped = s.images[:, ::-1].copy()
    np.testing.assert_array_equal(s.with_samples(image=flipped).images, flipped)
    with pytest.raises(ValueError, match=re.escape("with_samples['depth'] has shape (4, 16, 16)") + ".*5 samples"):
        s.with_samples(depth=depth[:4])
    bad = _features(5, 16)
    bad["p3"] = bad["p3"][:2]
    with pytest.raises(ValueError, match=re.escape("with_samples['features']['p3'] has shape (2, 4, 4, 2)")):
        s.with_samples(features=bad)
    with pytest.raises(ValueError, match=re.escape("with_samples['scale'] has shape ()")):
        s.with_samples(scale=1.0)
    with pytest.raises(ValueError, match="must be uint8"):
        s.with_samples(image=s.images.astype(np.float32) / 255)


def test_constructor_checks(root):
    s = load_split(root, "widget", "test", 16)
    with pytest.raises(ValueError, match="at least the key 'image'"):
        Split(s.images, s.masks, s.labels, s.defect_types, s.paths)
    with pytest.raises(ValueError, match=r"must be uint8 \[N, S, S, 3\], got float32"):
        Split({"image": s.images.astype(np.float32)}, s.masks, s.labels, s.defect_types, s.paths)
    with pytest.raises(ValueError, match="Split.labels has 4 entries but Split.paths has 5"):
        Split({"image": s.images}, s.masks, s.labels[:4], s.defect_types, s.paths)


# ----------------------------------------------------------------------------
# fingerprint


def test_fingerprint_stable_across_loads(root):
    a = load_split(root, "widget", "test", 16, num_workers=1).fingerprint()
    b = load_split(root, "widget", "test", 16, num_workers=4).fingerprint()
    assert a == b and re.fullmatch(r"[0-9a-f]{64}", a)
    assert load_split(root, "widget", "train", 16).fingerprint() != a


def test_fingerprint_follows_image_size(root):
    fps = {load_split(root, "widget", "test", s).fingerprint() for s in (16, 17, None)}
    assert len(fps) == 3


def _png(path, pixels):
    """Uncompressed PNG: its size depends on the image size only, not the pixels."""
    Image.fromarray(pixels).save(path, compress_level=0)


def _set_mtime(path, mtime_ns):
    os.utime(path, ns=(path.stat().st_atime_ns, mtime_ns))


def test_fingerprint_sees_same_size_rewrite(root):
    path = root / "widget" / "test" / "crack" / "001.png"
    rng = np.random.default_rng(7)
    _png(path, rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    old = load_split(root, "widget", "test", 16)
    fp, size, mtime = old.fingerprint(), path.stat().st_size, path.stat().st_mtime_ns
    _png(path, rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    # Set the time explicitly (as a rewrite a second later would): file
    # system clocks can be coarser than this test is fast.
    _set_mtime(path, mtime + 10**9)
    assert path.stat().st_size == size  # only the timestamp tells the change
    new = load_split(root, "widget", "test", 16)
    assert not np.array_equal(new.images[1], old.images[1])
    assert new.fingerprint() != fp
    # The split read before the rewrite no longer matches the disk.
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ".*changed on disk.*Load the split again"):
        old.fingerprint()


def test_fingerprint_sees_size_change(root):
    path = root / "widget" / "train" / "good" / "001.png"
    fp = load_split(root, "widget", "train", 16).fingerprint()
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path)  # compresses to far fewer bytes
    _set_mtime(path, mtime)  # same timestamp: only the size tells the change
    assert path.stat().st_size != size
    assert load_split(root, "widget", "train", 16).fingerprint() != fp


def test_fingerprint_sees_mask_change(root):
    path = root / "widget" / "ground_truth" / "scratch" / "000_mask.png"
    fp = load_split(root, "widget", "test", 16).fingerprint()
    _png(path, np.full((H, W), 255, np.uint8))
    _set_mtime(path, path.stat().st_mtime_ns + 10**9)
    assert load_split(root, "widget", "test", 16).fingerprint() != fp


def test_fingerprint_vanished_file(root):
    s = load_split(root, "widget", "test", 16)
    path = root / "widget" / "test" / "good" / "001.png"
    path.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ".*vanished"):
        s.fingerprint()
    # Also without recorded stats (a reader that does not record them).
    s.file_stats = []
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ".*vanished"):
        s.fingerprint()


def test_fingerprint_in_memory(root):
    s = load_split(root, "widget", "test", 16)
    mem = Split({"image": s.images.copy()}, s.masks, s.labels, s.defect_types, s.paths, "test", "widget")
    assert mem.files == [] and mem.fingerprint() == Split(**{**vars(mem)}).fingerprint()
    assert mem.fingerprint() != s.fingerprint()
    changed = s.images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert mem.with_samples(image=changed).fingerprint() != mem.fingerprint()
    assert mem.with_samples(depth=np.zeros((5, 16, 16))).fingerprint() != mem.fingerprint()
