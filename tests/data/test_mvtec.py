"""The MVTec AD reader on tiny fixtures written in tmp_path."""

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxflow_ad.data import mvtec
from jaxflow_ad.data.mvtec import DatasetError, list_categories, load_split

from .fixtures import H, W, mask_array, write_mvtec


@pytest.fixture
def root(tmp_path):
    return write_mvtec(tmp_path / "mvtec")


def _match(path) -> str:
    return re.escape(str(path))


def test_train_split(root):
    s = load_split(root, "widget", "train", 16)
    assert s.images.shape == (3, 16, 16, 3) and s.images.dtype == np.uint8
    assert s.samples.keys() == {"image"} and s.images is s.samples["image"]
    assert s.labels.dtype == np.int32 and s.labels.tolist() == [0, 0, 0]
    assert s.defect_types == ["good"] * 3
    assert [m.shape for m in s.masks] == [(H, W)] * 3
    assert not any(m.any() for m in s.masks)
    assert [p.rsplit("/", 3)[-3:] for p in s.paths] == [["train", "good", f"00{i}.png"] for i in range(3)]


def test_test_split_order_labels_masks(root):
    s = load_split(root, "widget", "test", 16)
    # Sorted by (defect type, file name); stems repeat across folders.
    assert s.defect_types == ["crack", "crack", "good", "good", "scratch"]
    assert s.labels.tolist() == [1, 1, 0, 0, 1]
    assert [k[2] for k in s.keys] == ["000", "001", "000", "001", "000"]
    assert len(set(s.keys)) == len(s) == 5
    assert all(m.dtype == bool and m.shape == (H, W) for m in s.masks)
    np.testing.assert_array_equal(s.masks[0], mask_array(0))
    np.testing.assert_array_equal(s.masks[1], mask_array(1))
    np.testing.assert_array_equal(s.masks[4], mask_array(0))  # 0/1 mask file
    assert not s.masks[2].any() and not s.masks[3].any()


def test_pixels_bilinear_and_grayscale_to_rgb(root):
    s = load_split(root, "widget", "test", 16)
    path = root / "widget" / "test" / "crack" / "001.png"
    want = np.asarray(Image.open(path).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
    # Stored as decoded: uint8, the exact bytes PIL's bilinear resize gives.
    assert s.images.dtype == np.uint8
    np.testing.assert_array_equal(s.images[1], want)
    gray = s.images[2]  # test/good/000 is a grayscale file
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


def test_native_size_and_threads_agree(root):
    a = load_split(root, "widget", "test", None, num_workers=1)
    b = load_split(root, "widget", "test", None, num_workers=4)
    assert a.images.shape == (5, H, W, 3)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.paths == b.paths


def test_masks_at(root):
    s = load_split(root, "widget", "test", 16)
    m = s.masks_at(10)
    assert m.shape == (5, 10, 10) and m.dtype == bool
    assert not m[2].any() and not m[3].any()
    want = (
        np.asarray(Image.fromarray(mask_array(1).astype(np.float32), "F").resize((10, 10), Image.Resampling.BILINEAR))
        >= 0.5
    )
    np.testing.assert_array_equal(m[1], want)
    assert m[1].any()
    # At their own size the masks come back unchanged.
    sq = mvtec.Split(
        {"image": s.images}, [np.pad(x, ((0, W - H), (0, 0))) for x in s.masks], s.labels, s.defect_types, s.paths
    )
    np.testing.assert_array_equal(sq.masks_at(W), np.stack(sq.masks))


def test_list_categories(root):
    write_mvtec(root, "other")
    (root / ".hidden").mkdir()
    (root / "not_a_category").mkdir()
    assert list_categories(root) == ["other", "widget"]


def test_uppercase_and_bmp_extensions(tmp_path):
    root = write_mvtec(tmp_path, defects={"crack": 1})
    cat = root / "widget"
    img = cat / "test" / "crack" / "000.png"
    Image.open(img).save(cat / "test" / "crack" / "000.bmp")
    img.unlink()
    msk = cat / "ground_truth" / "crack" / "000_mask.png"
    msk.rename(msk.with_suffix(".PNG"))
    s = load_split(root, "widget", "test", 8)
    assert s.paths[0].endswith("000.bmp") and s.masks[0].any()


# ----------------------------------------------------------------------------
# Bad input: one clear DatasetError naming the path.


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=_match(tmp_path / "nope") + ".*does not exist"):
        load_split(tmp_path / "nope", "widget", "train", 8)


def test_missing_category_lists_existing(root):
    with pytest.raises(
        DatasetError, match=r"'bottle' not found.*" + _match(root / "bottle") + r".*Categories under .*: widget"
    ):
        load_split(root, "bottle", "train", 8)


def test_corrupt_image(root):
    bad = root / "widget" / "test" / "crack" / "001.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match="Cannot read the image " + _match(bad) + ".*replace it"):
        load_split(root, "widget", "test", 8)


def test_truncated_image(root):
    bad = root / "widget" / "train" / "good" / "002.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="Cannot read the image " + _match(bad)):
        load_split(root, "widget", "train", 8)


def test_mask_size_mismatch(root):
    m = root / "widget" / "ground_truth" / "crack" / "001_mask.png"
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(m)
    with pytest.raises(DatasetError, match="Mask " + _match(m) + f" is {W + 1}x{H}.*is {W}x{H}"):
        load_split(root, "widget", "test", 8)


def test_missing_mask(root):
    (root / "widget" / "ground_truth" / "crack" / "001_mask.png").unlink()
    img = root / "widget" / "test" / "crack" / "001.png"
    with pytest.raises(
        DatasetError, match="No mask for the defect image " + _match(img) + ".*001_mask.png. Add the mask"
    ):
        load_split(root, "widget", "test", 8)


def test_missing_mask_folder(root):
    shutil.rmtree(root / "widget" / "ground_truth" / "scratch")
    with pytest.raises(
        DatasetError, match="Missing mask folder " + _match(root / "widget" / "ground_truth" / "scratch")
    ):
        load_split(root, "widget", "test", 8)


def test_orphan_mask(root):
    (root / "widget" / "test" / "crack" / "001.png").unlink()
    m = root / "widget" / "ground_truth" / "crack" / "001_mask.png"
    with pytest.raises(DatasetError, match="Mask " + _match(m) + " has no image"):
        load_split(root, "widget", "test", 8)


def test_empty_train_split(root):
    for p in (root / "widget" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="train split of 'widget' is empty.*" + _match(root / "widget" / "train")):
        load_split(root, "widget", "train", 8)


def test_unexpected_file_in_image_folder(root):
    junk = root / "widget" / "test" / "good" / "notes.txt"
    junk.write_text("x")
    with pytest.raises(DatasetError, match="Unexpected file " + _match(junk)):
        load_split(root, "widget", "test", 8)


def test_defect_folder_in_train(root):
    (root / "widget" / "train" / "crack").mkdir()
    with pytest.raises(DatasetError, match=_match(root / "widget" / "train" / "crack") + ".*only defect-free"):
        load_split(root, "widget", "train", 8)


def test_bad_split_name(root):
    with pytest.raises(DatasetError, match="split must be one of"):
        load_split(root, "widget", "val", 8)


def test_mask_encodings(tmp_path):
    """0/255 gray, 0/1 gray, RGB, RGBA (opaque alpha ignored), palette and 1-bit."""
    want = mask_array(0)
    u8 = want.astype(np.uint8)
    rgb = np.zeros(want.shape + (3,), np.uint8)
    rgb[want, 2] = 200  # pure blue: luminance alone would round to ~23
    rgba = np.concatenate([rgb, np.full(want.shape + (1,), 255, np.uint8)], -1)
    images = {
        "gray255": Image.fromarray(u8 * 255, "L"),
        "gray1": Image.fromarray(u8, "L"),
        "rgb": Image.fromarray(rgb, "RGB"),
        "rgba": Image.fromarray(rgba, "RGBA"),
        "palette": Image.fromarray(u8 * 255, "L").convert("P"),
        "bits": Image.fromarray(want),
    }
    for name, im in images.items():
        im.save(tmp_path / f"{name}.png")
        got = mvtec.read_mask(tmp_path / f"{name}.png")
        assert got.dtype == bool
        np.testing.assert_array_equal(got, want, err_msg=name)
