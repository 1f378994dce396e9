"""The VisA reader (data.layout=visa) on a tiny copy of VisA's raw layout, split_csv/1cls.csv included."""

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxflow_ad.data import LAYOUTS, VISA_CATEGORIES, DatasetError, get_reader, visa

from .fixtures import H, W, _image

HEADER = "object,split,label,image,mask"
# cashew numbers normal images with 3 digits like its anomalies (Normal/000.JPG and Anomaly/000.JPG
# both exist); candle uses 4 digits for normal images.
DIGITS = {"cashew": 3, "candle": 4}
N_TRAIN, N_TEST_NORMAL, N_ANOMALY = 3, 2, 2


def class_mask(i: int) -> np.ndarray:
    """Anomaly i's raw mask: defect-class ids, not 255 (0 background; ids 1 and 2, or 3)."""
    m = np.zeros((H, W), np.uint8)
    m[2 + i : 7 + i, 3:9] = 1 + 2 * i
    if i == 0:
        m[12:16, 14:20] = 2
    return m


def write_visa(root, categories=("cashew", "candle"), *, seed=0):
    """Write VisA's raw layout for ``categories`` under ``root`` and its ``split_csv/1cls.csv`` with CRLF
    line endings, rows not in file order (anomalies first), and return ``root``."""
    rng = np.random.default_rng(seed)
    rows = []
    for cat in categories:
        data = root / cat / "Data"
        for d in ("Images/Normal", "Images/Anomaly", "Masks/Anomaly"):
            (data / d).mkdir(parents=True)
        for i in range(N_ANOMALY):
            _image(rng).save(data / "Images" / "Anomaly" / f"{i:03d}.JPG", quality=95)
            Image.fromarray(class_mask(i), "L").save(data / "Masks" / "Anomaly" / f"{i:03d}.png")
            rows.append(
                f"{cat},test,anomaly,{cat}/Data/Images/Anomaly/{i:03d}.JPG,{cat}/Data/Masks/Anomaly/{i:03d}.png"
            )
        for i in range(N_TRAIN + N_TEST_NORMAL):
            name = f"{i:0{DIGITS[cat]}d}.JPG"
            _image(rng).save(data / "Images" / "Normal" / name, quality=95)
            rows.append(f"{cat},{'train' if i < N_TRAIN else 'test'},normal,{cat}/Data/Images/Normal/{name},")
        (root / cat / "image_anno.csv").write_text("image,label,mask\n")  # not read
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_bytes(("\r\n".join([HEADER, *rows]) + "\r\n").encode())
    return root


@pytest.fixture
def root(tmp_path):
    return write_visa(tmp_path / "VisA")


def _csv(root):
    return root / "split_csv" / "1cls.csv"


def _match(path) -> str:
    return re.escape(str(path))


def _edit_csv(root, old, new):
    path = _csv(root)
    text = path.read_bytes().decode()
    assert old in text
    path.write_bytes(text.replace(old, new).encode())


def test_fixture_is_crlf_with_colliding_stems(root):
    raw = _csv(root).read_bytes()
    assert raw.count(b"\r\n") == 1 + 2 * (N_ANOMALY + N_TRAIN + N_TEST_NORMAL) and b"\n" not in raw.replace(
        b"\r\n", b""
    )
    assert raw.split(b"\r\n")[1].endswith(b".png")  # a naive split on "\n" would leave ".png\r"
    images = root / "cashew" / "Data" / "Images"
    assert (images / "Normal" / "000.JPG").is_file() and (images / "Anomaly" / "000.JPG").is_file()


def test_train_split(root):
    s = visa.load_split(root, "candle", "train", None)
    assert len(s) == N_TRAIN and s.split == "train" and s.category == "candle"
    assert [p.rsplit("/", 2)[-2:] for p in s.paths] == [["Normal", f"{i:04d}.JPG"] for i in range(N_TRAIN)]
    assert s.labels.tolist() == [0] * N_TRAIN and s.defect_types == ["good"] * N_TRAIN
    assert s.images.shape == (N_TRAIN, H, W, 3) and not any(m.any() for m in s.masks)


def test_test_split_stem_collision_and_class_id_masks(root):
    s = visa.load_split(root, "cashew", "test", 16)
    assert s.labels.tolist() == [0, 0, 1, 1]
    assert s.defect_types == ["good", "good", "anomaly", "anomaly"]
    assert [p.rsplit("/", 2)[-2:] for p in s.paths] == [
        ["Normal", "003.JPG"],
        ["Normal", "004.JPG"],
        ["Anomaly", "000.JPG"],
        ["Anomaly", "001.JPG"],
    ]
    # Train's Normal/000.JPG and test's Anomaly/000.JPG share a stem; paths and keys stay unique.
    train = visa.load_split(root, "cashew", "train", 16)
    assert train.paths[0].endswith("/Normal/000.JPG") and s.paths[2].endswith("/Anomaly/000.JPG")
    assert len(set(s.keys)) == len(s) and len(set(s.paths)) == len(s)
    assert not set(train.paths) & set(s.paths)
    # Class ids 1, 2 and 3 are all defective.
    for i in range(N_ANOMALY):
        assert s.masks[2 + i].dtype == bool and s.masks[2 + i].shape == (H, W)
        np.testing.assert_array_equal(s.masks[2 + i], class_mask(i) > 0)
    assert not s.masks[0].any() and not s.masks[1].any()
    assert s.images.shape == (4, 16, 16, 3)
    assert s.files[0] == str(_csv(root)) and len(s.files) == len(s.file_stats) == 1 + 4 + N_ANOMALY


def test_stem_collision_within_test(root):
    """Normal/000.JPG as a test image next to Anomaly/000.JPG: the keys differ by defect type."""
    _edit_csv(
        root,
        "cashew,train,normal,cashew/Data/Images/Normal/000.JPG",
        "cashew,test,normal,cashew/Data/Images/Normal/000.JPG",
    )
    s = visa.load_split(root, "cashew", "test", 8)
    assert [k for k in s.keys if k[2] == "000"] == [("test", "good", "000"), ("test", "anomaly", "000")]
    assert len(set(s.keys)) == len(s) == 5


def test_lf_line_endings_read_alike(root):
    crlf = visa.scan_split(root, "cashew", "test").records
    _csv(root).write_bytes(_csv(root).read_bytes().replace(b"\r\n", b"\n"))
    assert visa.scan_split(root, "cashew", "test").records == crlf


def test_registered_reader(root):
    r = get_reader("visa")
    assert r is LAYOUTS["visa"] and r.scan is visa.scan_split and r.splits == ("train", "test")
    assert r.list_categories(root) == ["candle", "cashew"]
    assert set(r.list_categories(root)) <= set(VISA_CATEGORIES)
    scan = r.scan(root, "candle", "test")
    assert [rec.key for rec in scan.records] == [
        ("test", "good", "0003"),
        ("test", "good", "0004"),
        ("test", "anomaly", "000"),
        ("test", "anomaly", "001"),
    ]
    s = r.load_split(root, "candle", "test", 8, resize="cv2_linear")
    assert s.images.shape == (4, 8, 8, 3) and s.labels.sum() == N_ANOMALY


# ----------------------------------------------------------------------------
# Bad input: one DatasetError naming the file (and the CSV line).


def test_row_names_missing_image(root):
    missing = root / "cashew" / "Data" / "Images" / "Normal" / "001.JPG"
    missing.unlink()
    with pytest.raises(
        DatasetError,
        match=_match(_csv(root)) + r" line \d+ names the image " + _match(missing) + ", which does not exist",
    ):
        visa.scan_split(root, "cashew", "train")
    # Another category is not affected.
    assert len(visa.scan_split(root, "candle", "train").records) == N_TRAIN


def test_missing_mask(root):
    missing = root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=r"line \d+ names the mask " + _match(missing) + ", which does not exist"):
        visa.scan_split(root, "candle", "test")


def test_lowercase_jpg_in_csv(root):
    _edit_csv(root, "candle/Data/Images/Normal/0002.JPG", "candle/Data/Images/Normal/0002.jpg")
    with pytest.raises(DatasetError, match=r"0002\.jpg, which does not exist \(paths are case-sensitive"):
        visa.scan_split(root, "candle", "train")


def test_stray_image_without_row(root):
    stray = root / "cashew" / "Data" / "Images" / "Anomaly" / "002.JPG"
    shutil.copy(root / "cashew" / "Data" / "Images" / "Anomaly" / "000.JPG", stray)
    with pytest.raises(DatasetError, match="Unexpected file " + _match(stray) + ": no row of " + _match(_csv(root))):
        visa.scan_split(root, "cashew", "train")


def test_stray_mask_without_row(root):
    stray = root / "cashew" / "Data" / "Masks" / "Anomaly" / "000_copy.png"
    shutil.copy(root / "cashew" / "Data" / "Masks" / "Anomaly" / "000.png", stray)
    with pytest.raises(DatasetError, match="Unexpected file " + _match(stray)):
        visa.scan_split(root, "cashew", "test")


def test_anomaly_row_without_mask(root):
    _edit_csv(root, ",candle/Data/Masks/Anomaly/001.png", ",")
    with pytest.raises(DatasetError, match=r"line \d+: the anomalous image .*001\.JPG has no mask"):
        visa.scan_split(root, "candle", "test")


def test_normal_row_with_mask(root):
    _edit_csv(root, "Normal/0004.JPG,", "Normal/0004.JPG,candle/Data/Masks/Anomaly/000.png")
    with pytest.raises(DatasetError, match=r"line \d+: the normal image .*0004\.JPG has the mask"):
        visa.scan_split(root, "candle", "test")


def test_anomaly_in_train(root):
    _edit_csv(
        root,
        "cashew,test,anomaly,cashew/Data/Images/Anomaly/001.JPG",
        "cashew,train,anomaly,cashew/Data/Images/Anomaly/001.JPG",
    )
    with pytest.raises(DatasetError, match=r"line \d+: an anomalous image in the train split.*1cls\.csv"):
        visa.scan_split(root, "cashew", "test")


def test_duplicate_row(root):
    path = _csv(root)
    path.write_bytes(path.read_bytes() + b"candle,test,normal,candle/Data/Images/Normal/0003.JPG,\r\n")
    with pytest.raises(DatasetError, match=r"line 16 names the image .*0003\.JPG, which line \d+ names too"):
        visa.scan_split(root, "candle", "train")


def test_bad_header_and_values(root):
    text = _csv(root).read_bytes()
    _csv(root).write_bytes(text.replace(b"object,split", b"category,split", 1))
    with pytest.raises(DatasetError, match=_match(_csv(root)) + " line 1: the header is 'category,split"):
        visa.list_categories(root)
    _csv(root).write_bytes(text.replace(b"candle,train,normal", b"candle,val,normal", 1))
    with pytest.raises(DatasetError, match=r"line \d+: split is 'val'"):
        visa.scan_split(root, "candle", "test")
    _csv(root).write_bytes(text.replace(b"candle,test,anomaly", b"candle,test,bad", 1))
    with pytest.raises(DatasetError, match=r"line \d+: label is 'bad'"):
        visa.scan_split(root, "candle", "test")
    _csv(root).write_bytes(text.replace(b"candle,train,normal,", b"candle,train,normal,/abs/", 1))
    with pytest.raises(DatasetError, match=r"line \d+: the image path '/abs/candle.*must be relative"):
        visa.scan_split(root, "candle", "train")


def test_missing_split_file_and_category(root):
    with pytest.raises(
        DatasetError, match="'pcb1' not found: no row of .*object='pcb1'.*Categories there: candle, cashew"
    ):
        visa.scan_split(root, "pcb1", "train")
    _csv(root).unlink()
    with pytest.raises(DatasetError, match="Missing split file " + _match(_csv(root))):
        visa.load_split(root, "candle", "train", 8)


def test_mask_size_differs(root):
    mask = root / "candle" / "Data" / "Masks" / "Anomaly" / "000.png"
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(mask)
    with pytest.raises(DatasetError, match="Mask " + _match(mask) + f" is {W}x{H + 1}"):
        visa.load_split(root, "candle", "test", 8)
