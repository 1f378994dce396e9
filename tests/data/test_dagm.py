"""The DAGM 2007 reader (data.layout=dagm) on tiny class folders written in tmp_path."""

import logging
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxflow_ad.data import LAYOUTS, DatasetError, dagm, get_reader

S = 32  # fixture images are S x S 8-bit grayscale (the real ones are 512 x 512)
TRAIN_FLAGS = (0, 1, 0, 0, 1, 0)  # 0002 and 0005 defective: left out of the train split
TEST_FLAGS = (1, 0, 0, 1, 1, 0)


def mask_array(i: int) -> np.ndarray:
    """The coarse ellipse of defective image ``i`` (different for every i)."""
    yy, xx = np.mgrid[:S, :S]
    return ((yy - 8 - 2 * i) / 6) ** 2 + ((xx - 16 + i) / (4 + i)) ** 2 <= 1


def write_class(
    root,
    cls="Class1",
    *,
    nested=False,
    kaggle=False,
    header="6",
    bom=False,
    newline="\n",
    seed=0,
):
    """Write ``root/cls`` (or ``root/cls/cls`` when ``nested``) in DAGM's layout; return the folder
    holding Train/ and Test/.

    Image ``NNNN.PNG`` number i has the flag ``{TRAIN,TEST}_FLAGS[i - 1]``; defective ones have the
    0/255 mask ``mask_array(i)`` in ``Label/NNNN_label.PNG`` (``Label/NNNN.PNG`` when ``kaggle``;
    Labels.txt names ``NNNN_label.PNG`` either way). Odd normal rows have the 5th column ``0``,
    even ones lack it.
    """
    base = root / cls / cls if nested else root / cls
    rng = np.random.default_rng(seed)
    for folder, flags in (("Train", TRAIN_FLAGS), ("Test", TEST_FLAGS)):
        d = base / folder
        (d / "Label").mkdir(parents=True)
        lines = [("\ufeff" if bom else "") + header]
        for i, flag in enumerate(flags, start=1):
            name = f"{i:04d}.PNG"
            Image.fromarray(rng.integers(0, 256, (S, S), dtype=np.uint8), "L").save(d / name)
            if flag:
                mask = f"{i:04d}{'' if kaggle else '_label'}.PNG"
                Image.fromarray(mask_array(i).astype(np.uint8) * 255, "L").save(d / "Label" / mask)
                lines.append(f"{i}\t1\t{name}\t0\t{i:04d}_label.PNG")
            else:
                lines.append(f"{i}\t0\t{name}\t0" + ("\t0" if i % 2 else ""))
        (d / "Label" / "Labels.txt").write_bytes((newline.join(lines) + newline).encode())
    return base


@pytest.fixture
def root(tmp_path):
    write_class(tmp_path / "dagm")
    return tmp_path / "dagm"


def _match(path) -> str:
    return re.escape(str(path))


def _check_test_split(s, base):
    assert len(s) == 6 and s.split == "test" and s.category == base.name
    assert [p.rsplit("/", 2)[-2:] for p in s.paths] == [["Test", f"{i:04d}.PNG"] for i in range(1, 7)]
    assert s.labels.dtype == np.int32 and s.labels.tolist() == list(TEST_FLAGS)
    assert s.defect_types == ["defect", "good", "good", "defect", "defect", "good"]
    assert all(m.dtype == bool and m.shape == (S, S) for m in s.masks)
    for i, (flag, m) in enumerate(zip(TEST_FLAGS, s.masks), start=1):
        if flag:
            assert m.any()
            np.testing.assert_array_equal(m, mask_array(i), err_msg=f"mask of {i:04d}")
        else:
            assert not m.any()


# ----------------------------------------------------------------------------
# Reading


def test_train_split_keeps_normal_images_only(root, caplog):
    with caplog.at_level(logging.INFO, logger="jaxflow_ad.data.dagm"):
        s = dagm.load_split(root, "Class1", "train", None)
    assert len(s) == 4 and s.split == "train" and s.category == "Class1"
    assert [p.rsplit("/", 2)[-2:] for p in s.paths] == [["Train", f"{i:04d}.PNG"] for i in (1, 3, 4, 6)]
    assert s.labels.tolist() == [0, 0, 0, 0] and s.defect_types == ["good"] * 4
    assert [m.shape for m in s.masks] == [(S, S)] * 4 and not any(m.any() for m in s.masks)
    assert s.images.shape == (4, S, S, 3) and s.images.dtype == np.uint8
    # The exclusion is logged at INFO and inspectable.
    msg = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.name == "jaxflow_ad.data.dagm"]
    assert len(msg) == 1 and "Class1/train: 2 of 6 images" in msg[0] and "left out" in msg[0]
    scan = dagm.scan_split(root, "Class1", "train")
    assert [p.name for p in scan.excluded] == ["0002.PNG", "0005.PNG"]
    assert [r.stem for r in scan.records] == ["0001", "0003", "0004", "0006"]
    assert scan.folder == root / "Class1" / "Train"
    assert scan.labels_file == root / "Class1" / "Train" / "Label" / "Labels.txt"
    assert dagm.scan_split(root, "Class1", "test").excluded == []


def test_test_split_labels_and_masks(root):
    s = dagm.load_split(root, "Class1", "test", 16)
    _check_test_split(s, root / "Class1")
    assert s.images.shape == (6, 16, 16, 3)
    small = s.masks_at(8)
    assert small.shape == (6, 8, 8) and not small[[1, 2, 5]].any() and small[[0, 3, 4]].any(axis=(1, 2)).all()


def test_grayscale_read_as_three_equal_channels(root):
    native = dagm.load_split(root, "Class1", "test", None, num_workers=1)
    small = dagm.load_split(root, "Class1", "test", 16, num_workers=4)
    for i, path in enumerate(native.paths):
        gray = np.asarray(Image.open(path))
        assert gray.shape == (S, S)
        for c in range(3):
            np.testing.assert_array_equal(native.images[i, ..., c], gray)
        want = np.asarray(Image.open(path).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(small.images[i], want)
        np.testing.assert_array_equal(small.images[i, ..., 0], small.images[i, ..., 2])


def test_files_include_labels_txt(root):
    s = dagm.load_split(root, "Class1", "test", 8)
    label = root / "Class1" / "Test" / "Label"
    assert s.files[0] == str(label / "Labels.txt")
    assert {str(label / f"{i:04d}_label.PNG") for i in (1, 4, 5)} <= set(s.files)
    assert len(s.files) == len(s.file_stats) == 1 + 6 + 3
    assert s.fingerprint() == dagm.load_split(root, "Class1", "test", 8).fingerprint()
    # Editing Labels.txt after the read makes the split in memory stale.
    (label / "Labels.txt").write_text((label / "Labels.txt").read_text() + "\n")
    with pytest.raises(DatasetError, match=_match(label / "Labels.txt") + ".*changed on disk"):
        s.fingerprint()


def test_list_categories_numeric_order(tmp_path):
    for cls in ("Class10", "Class2", "Class1"):
        write_class(tmp_path, cls)
    write_class(tmp_path, "Class3", nested=True)
    (tmp_path / "Class1_def").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "readme.txt").write_text("x")
    assert dagm.list_categories(tmp_path) == ["Class1", "Class2", "Class3", "Class10"]


def test_nested_class_folder(tmp_path):
    base = write_class(tmp_path, "Class3", nested=True)
    assert base == tmp_path / "Class3" / "Class3"
    _check_test_split(dagm.load_split(tmp_path, "Class3", "test", None), base)
    assert len(dagm.load_split(tmp_path, "Class3", "train", None)) == 4


def test_kaggle_mask_names(tmp_path):
    base = write_class(tmp_path, kaggle=True)
    assert (base / "Test" / "Label" / "0001.PNG").is_file()
    assert not (base / "Test" / "Label" / "0001_label.PNG").exists()
    s = dagm.load_split(tmp_path, "Class1", "test", None)
    _check_test_split(s, base)
    assert str(base / "Test" / "Label" / "0004.PNG") in s.files


def test_bom_text_header_and_crlf(tmp_path):
    base = write_class(tmp_path, header="Index\tDefective\tImage\t0\tLabel", bom=True, newline="\r\n")
    assert (base / "Test" / "Label" / "Labels.txt").read_bytes().startswith(b"\xef\xbb\xbfIndex\t")
    _check_test_split(dagm.load_split(tmp_path, "Class1", "test", None), base)
    assert len(dagm.load_split(tmp_path, "Class1", "train", None)) == 4


def test_extensions_and_folder_names_ignore_case(root):
    test = root / "Class1" / "Test"
    (test / "0002.PNG").rename(test / "0002.png")  # Labels.txt still says 0002.PNG
    (test / "Label" / "Labels.txt").rename(test / "Label" / "labels.txt")
    test.rename(root / "Class1" / "test")
    s = dagm.load_split(root, "Class1", "test", None)
    assert s.paths[1].endswith("/test/0002.png") and s.labels.tolist() == list(TEST_FLAGS)


def test_registered_reader_end_to_end(root):
    write_class(root, "Class2", nested=True, seed=1)
    r = get_reader("dagm")
    assert r is LAYOUTS["dagm"] and r.name == "dagm"
    assert r.modalities == ("image",) and r.spatial == ("image",) and r.splits == ("train", "test")
    assert r.list_categories(root) == ["Class1", "Class2"]
    for cls in ("Class1", "Class2"):
        train = r.load_split(root, cls, "train", 12, resize="cv2_linear")
        test = r.load_split(root, cls, "test", 12)
        assert tuple(train.samples) == tuple(test.samples) == r.modalities
        assert train.images.shape == (4, 12, 12, 3) and test.images.shape == (6, 12, 12, 3)
        assert train.labels.sum() == 0 and test.labels.tolist() == list(TEST_FLAGS)


# ----------------------------------------------------------------------------
# Bad input: one clear DatasetError naming the file.


def _labels(root, folder="Test"):
    return root / "Class1" / folder / "Label" / "Labels.txt"


def _edit_row(path, i, new_row):
    lines = path.read_text().splitlines()
    lines[i] = new_row  # line i + 1 of the file; line 1 is the header
    path.write_text("\n".join(lines) + "\n")


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=_match(tmp_path / "nope") + ".*does not exist"):
        dagm.load_split(tmp_path / "nope", "Class1", "train", 8)


def test_missing_class_lists_existing(root):
    write_class(root, "Class10")
    with pytest.raises(
        DatasetError,
        match=r"'Class7' not found: " + _match(root / "Class7") + r".*DAGM classes under .*: Class1, Class10",
    ):
        dagm.load_split(root, "Class7", "test", 8)


def test_class_without_split_folders(root):
    (root / "Class4").mkdir()
    with pytest.raises(DatasetError, match="No Train/ or Test/ folder in " + _match(root / "Class4")):
        dagm.load_split(root, "Class4", "train", 8)


def test_class_both_flat_and_nested(root):
    shutil.copytree(root / "Class1", root / "Class1" / "Class1")
    with pytest.raises(DatasetError, match="Both " + _match(root / "Class1") + " and .*Class1/Class1"):
        dagm.load_split(root, "Class1", "test", 8)


def test_missing_test_folder(root):
    shutil.rmtree(root / "Class1" / "Test")
    with pytest.raises(DatasetError, match="Missing folder " + _match(root / "Class1" / "Test")):
        dagm.load_split(root, "Class1", "test", 8)


def test_missing_labels_txt(root):
    _labels(root).unlink()
    with pytest.raises(DatasetError, match="Missing " + _match(_labels(root)) + ".*Restore it"):
        dagm.load_split(root, "Class1", "test", 8)


def test_unreadable_labels_txt(root):
    _labels(root, "Train").write_bytes(b"6\n1\t0\t0001.PNG\t0\t0\n\xff\xfe\x80\n")
    with pytest.raises(DatasetError, match="Cannot read " + _match(_labels(root, "Train")) + ": UnicodeDecodeError"):
        dagm.load_split(root, "Class1", "train", 8)


def test_row_names_missing_image(root):
    (root / "Class1" / "Test" / "0003.PNG").unlink()
    with pytest.raises(
        DatasetError,
        match=_match(_labels(root))
        + " line 4 names the image '0003.PNG', but "
        + _match(root / "Class1" / "Test" / "0003.PNG")
        + " does not exist",
    ):
        dagm.load_split(root, "Class1", "test", 8)


def test_image_without_row(root):
    shutil.copy(root / "Class1" / "Train" / "0001.PNG", root / "Class1" / "Train" / "0007.PNG")
    with pytest.raises(
        DatasetError, match="Image " + _match(root / "Class1" / "Train" / "0007.PNG") + " has no row in "
    ):
        dagm.load_split(root, "Class1", "train", 8)


def test_defective_row_without_mask(root):
    (root / "Class1" / "Test" / "Label" / "0004_label.PNG").unlink()
    with pytest.raises(
        DatasetError,
        match="No mask for the defective image "
        + _match(root / "Class1" / "Test" / "0004.PNG")
        + ".*line 5 flags it 1.*expected "
        + _match(root / "Class1" / "Test" / "Label" / "0004_label.PNG"),
    ):
        dagm.load_split(root, "Class1", "test", 8)


def test_defective_train_row_without_mask(root):
    """Even though defective Train images are left out, Labels.txt and Label/ must agree."""
    (root / "Class1" / "Train" / "Label" / "0005_label.PNG").unlink()
    with pytest.raises(DatasetError, match="No mask for the defective image " + _match(root / "Class1" / "Train")):
        dagm.load_split(root, "Class1", "train", 8)


def test_mask_of_a_normal_row(root):
    mask = root / "Class1" / "Test" / "Label" / "0003_label.PNG"
    shutil.copy(root / "Class1" / "Test" / "Label" / "0001_label.PNG", mask)
    with pytest.raises(DatasetError, match="Mask " + _match(mask) + " exists but .*line 4 flags its image"):
        dagm.load_split(root, "Class1", "test", 8)


def test_orphan_mask(root):
    mask = root / "Class1" / "Test" / "Label" / "0009_label.PNG"
    shutil.copy(root / "Class1" / "Test" / "Label" / "0001_label.PNG", mask)
    with pytest.raises(DatasetError, match="Mask " + _match(mask) + " is the mask of no defective row"):
        dagm.load_split(root, "Class1", "test", 8)


def test_flag_not_0_or_1(root):
    _edit_row(_labels(root), 3, "3\t2\t0003.PNG\t0\t0")
    with pytest.raises(
        DatasetError, match=_match(_labels(root)) + " line 4: the defective flag of '0003.PNG' is '2'; it must be 0"
    ):
        dagm.load_split(root, "Class1", "test", 8)


def test_row_with_too_few_columns(root):
    _edit_row(_labels(root), 2, "2 0 0002.PNG 0 0")
    with pytest.raises(DatasetError, match=_match(_labels(root)) + " line 3 has 1 column.*tab-separated"):
        dagm.load_split(root, "Class1", "test", 8)


def test_duplicate_row(root):
    _edit_row(_labels(root), 3, "3\t0\t0002.PNG\t0\t0")
    with pytest.raises(DatasetError, match=_match(_labels(root)) + " line 4 names 0002.PNG again"):
        dagm.load_split(root, "Class1", "test", 8)


def test_mask_size_differs_from_image(root):
    mask = root / "Class1" / "Test" / "Label" / "0005_label.PNG"
    Image.fromarray(np.zeros((S, S + 1), np.uint8)).save(mask)
    with pytest.raises(DatasetError, match="Mask " + _match(mask) + f" is {S + 1}x{S}.*is {S}x{S}"):
        dagm.load_split(root, "Class1", "test", 8)


def test_corrupt_image(root):
    bad = root / "Class1" / "Train" / "0004.PNG"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="Cannot read the image " + _match(bad)):
        dagm.load_split(root, "Class1", "train", 8)


def test_corrupt_mask(root):
    bad = root / "Class1" / "Test" / "Label" / "0001_label.PNG"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="Cannot read the mask " + _match(bad)):
        dagm.load_split(root, "Class1", "test", 8)


def test_unexpected_file_in_split_folder(root):
    junk = root / "Class1" / "Test" / "notes.txt"
    junk.write_text("x")
    with pytest.raises(DatasetError, match="Unexpected file " + _match(junk)):
        dagm.load_split(root, "Class1", "test", 8)


def test_all_train_images_defective(root):
    path = _labels(root, "Train")
    for i in (1, 3, 4, 6):
        _edit_row(path, i, f"{i}\t1\t{i:04d}.PNG\t0\t{i:04d}_label.PNG")
        shutil.copy(path.parent / "0002_label.PNG", path.parent / f"{i:04d}_label.PNG")
    with pytest.raises(DatasetError, match="train split of 'Class1' is empty: " + _match(path) + " lists no normal"):
        dagm.load_split(root, "Class1", "train", 8)


def test_bad_split_and_size(root):
    with pytest.raises(DatasetError, match="split must be one of"):
        dagm.load_split(root, "Class1", "Train", 8)
    with pytest.raises(DatasetError, match="image_size must be a positive int"):
        dagm.load_split(root, "Class1", "train", 0)
