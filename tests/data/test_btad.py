"""The BTAD reader (data.layout=btad) on tiny product folders in BTAD's exact on-disk layout."""

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxflow_ad.data import BTAD_CATEGORIES, LAYOUTS, DatasetError, btad, get_reader

from .fixtures import H, W, _image, _mask, mask_array

# Per product, as in the release: (image extension, mask extension).
EXTS = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}
# The ko stems: numeric as in BTAD, plus "bump", which a character-set strip of the extensions
# ("bump.png".rstrip("png").rstrip(".").rstrip("bmp") == "bu") would mangle.
KO = ("0000", "0001", "bump")


def write_btad(root, product="01", *, n_train=3, n_ok=2, seed=0):
    """Write ``root/product`` in BTAD's layout: train/ok, test/ok, test/ko (stems ``KO``, ko image i with
    the 0/255 mask ``mask_array(i)`` in ground_truth/ko/<stem> with the product's mask extension).
    Product 01 also has one ko image stored as .png (``0001.png``) next to the .bmp ones."""
    image_ext, mask_ext = EXTS[product]
    rng = np.random.default_rng(seed)
    base = root / product
    for d in ("train/ok", "test/ok", "test/ko", "ground_truth/ko"):
        (base / d).mkdir(parents=True)
    for i in range(n_train):
        _image(rng).save(base / "train" / "ok" / f"{i:04d}{image_ext}")
    for i in range(n_ok):
        _image(rng).save(base / "test" / "ok" / f"{i:04d}{image_ext}")
    for i, stem in enumerate(KO):
        ext = ".png" if product == "01" and stem == "0001" else image_ext
        _image(rng).save(base / "test" / "ko" / f"{stem}{ext}")
        _mask(i).save(base / "ground_truth" / "ko" / f"{stem}{mask_ext}")
    return root


@pytest.fixture
def root(tmp_path):
    return write_btad(tmp_path / "BTech_Dataset_transformed")


def _match(path) -> str:
    return re.escape(str(path))


def test_fixture_has_the_quirks(root):
    assert (root / "01" / "test" / "ko" / "0000.bmp").is_file()
    assert (root / "01" / "ground_truth" / "ko" / "0000.png").is_file()
    assert (root / "01" / "test" / "ko" / "0001.png").is_file()
    assert Image.open(root / "01" / "test" / "ko" / "0000.bmp").format == "BMP"


def test_train_split(root):
    s = btad.load_split(root, "01", "train", None)
    assert len(s) == 3 and s.split == "train" and s.category == "01"
    assert [p.rsplit("/", 3)[-3:] for p in s.paths] == [["train", "ok", f"{i:04d}.bmp"] for i in range(3)]
    assert s.labels.tolist() == [0, 0, 0] and s.defect_types == ["good"] * 3
    assert s.images.shape == (3, H, W, 3) and s.has_masks
    assert all(m.shape == (H, W) and m.dtype == bool and not m.any() for m in s.masks)


@pytest.mark.parametrize("product", ["01", "02", "03"])
def test_test_split_pairs_masks_by_stem(tmp_path, product):
    root = write_btad(tmp_path, product, seed=int(product))
    s = btad.load_split(root, product, "test", 12)
    assert s.labels.tolist() == [0, 0, 1, 1, 1]
    assert s.defect_types == ["good", "good", "ko", "ko", "ko"]
    assert [p.rsplit("/", 2)[-2] for p in s.paths] == ["ok", "ok", "ko", "ko", "ko"]
    assert [p.rsplit("/", 1)[-1].split(".")[0] for p in s.paths] == ["0000", "0001", "0000", "0001", "bump"]
    assert s.images.shape == (5, 12, 12, 3)
    assert not s.masks[0].any() and not s.masks[1].any()
    for i, m in enumerate(s.masks[2:]):
        np.testing.assert_array_equal(m, mask_array(i), err_msg=f"mask of {KO[i]}")
    mask_ext = EXTS[product][1]
    gt = root / product / "ground_truth" / "ko"
    assert {str(gt / f"{stem}{mask_ext}") for stem in KO} <= set(s.files)
    assert len(set(s.keys)) == len(s)


def test_scan_without_pixels(root):
    recs = btad.scan_split(root, "01", "test")
    assert [(r.defect_type, r.image_path.name, r.mask_path and r.mask_path.name) for r in recs] == [
        ("good", "0000.bmp", None),
        ("good", "0001.bmp", None),
        ("ko", "0000.bmp", "0000.png"),
        ("ko", "0001.png", "0001.png"),
        ("ko", "bump.bmp", "bump.png"),
    ]


def test_registered_reader(root):
    write_btad(root, "02", seed=2)
    write_btad(root, "03", seed=3)
    (root / "readme.txt").write_text("loose files under the root are ignored\n")
    r = get_reader("btad")
    assert r is LAYOUTS["btad"] and r.scan is btad.scan_split and r.splits == ("train", "test")
    assert r.list_categories(root) == list(BTAD_CATEGORIES)
    for product in BTAD_CATEGORIES:
        assert len(r.scan(root, product, "test")) == 5
        s = r.load_split(root, product, "test", 8, resize="cv2_linear")
        assert s.images.shape == (5, 8, 8, 3) and s.labels.sum() == 3


# ----------------------------------------------------------------------------
# Bad input: one DatasetError naming the file.


def test_missing_mask(root):
    (root / "01" / "ground_truth" / "ko" / "bump.png").unlink()
    with pytest.raises(
        DatasetError,
        match="No mask for the defective image "
        + _match(root / "01" / "test" / "ko" / "bump.bmp")
        + ": expected "
        + _match(root / "01" / "ground_truth" / "ko" / "bump")
        + r"\.png",
    ):
        btad.scan_split(root, "01", "test")


def test_mask_with_suffix_is_not_paired(root):
    gt = root / "01" / "ground_truth" / "ko"
    (gt / "0000.png").rename(gt / "0000_mask.png")
    with pytest.raises(DatasetError, match="No mask for the defective image " + _match(root / "01" / "test" / "ko")):
        btad.scan_split(root, "01", "test")


def test_orphan_mask(root):
    orphan = root / "01" / "ground_truth" / "ko" / "0007.png"
    shutil.copy(root / "01" / "ground_truth" / "ko" / "0000.png", orphan)
    with pytest.raises(DatasetError, match="Mask " + _match(orphan) + " has no image"):
        btad.scan_split(root, "01", "test")


def test_two_files_of_one_stem(root):
    ko = root / "01" / "test" / "ko"
    shutil.copy(ko / "0000.bmp", ko / "0000.png")
    with pytest.raises(DatasetError, match="Two files with the same stem '0000' in " + _match(ko)):
        btad.scan_split(root, "01", "test")


def test_stray_file(root):
    stray = root / "01" / "test" / "ok" / "Thumbs.db"
    stray.write_bytes(b"x")
    with pytest.raises(DatasetError, match="Unexpected file " + _match(stray)):
        btad.scan_split(root, "01", "test")


def test_ko_folder_in_train(root):
    shutil.copytree(root / "01" / "test" / "ko", root / "01" / "train" / "ko")
    with pytest.raises(
        DatasetError, match="Unexpected folder " + _match(root / "01" / "train" / "ko") + ".*belong in test/ko/"
    ):
        btad.scan_split(root, "01", "train")


def test_unknown_test_folder(root):
    (root / "01" / "test" / "good").mkdir()
    with pytest.raises(DatasetError, match="Unexpected folder " + _match(root / "01" / "test" / "good")):
        btad.scan_split(root, "01", "test")


def test_missing_ground_truth(root):
    shutil.rmtree(root / "01" / "ground_truth")
    with pytest.raises(DatasetError, match="Missing mask folder " + _match(root / "01" / "ground_truth" / "ko")):
        btad.load_split(root, "01", "test", 8)


def test_missing_product(root):
    with pytest.raises(DatasetError, match="'04' not found: .*Categories under .*: 01"):
        btad.load_split(root, "04", "train", 8)


def test_mask_size_differs(root):
    mask = root / "01" / "ground_truth" / "ko" / "0001.png"
    Image.fromarray(np.zeros((H, W + 2), np.uint8)).save(mask)
    with pytest.raises(DatasetError, match="Mask " + _match(mask) + f" is {W + 2}x{H}"):
        btad.load_split(root, "01", "test", 8)
