"""The MVTec LOCO AD reader (data.layout=mvtec_loco) on a tiny category in LOCO's exact on-disk layout."""

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxflow_ad.data import LAYOUTS, LOCO_CATEGORIES, DatasetError, get_reader, mvtec_loco

from .fixtures import H, W, _image

# Per anomalous image, its mask folder: one (region, pixel_value) per file 000.png, 001.png, ...
# The values are per-defect pixel_values of defects_config.json, not 255.
REGIONS = {
    ("logical_anomalies", "000"): [((slice(2, 8), slice(3, 10)), 255), ((slice(12, 18), slice(14, 22)), 17)],
    ("logical_anomalies", "001"): [((slice(5, 9), slice(1, 4)), 34)],
    ("structural_anomalies", "000"): [((slice(0, 3), slice(0, 24)), 1), ((slice(1, 5), slice(20, 24)), 200)],
}


def loco_mask(defect: str, stem: str) -> np.ndarray:
    """The expected mask: the OR of the image's mask files."""
    m = np.zeros((H, W), bool)
    for region, _ in REGIONS[(defect, stem)]:
        m[region] = True
    return m


def write_loco(root, category="juice_bottle", *, n_train=3, n_val=2, n_good=2, seed=0):
    """Write ``root/category`` in MVTec LOCO AD's layout and return ``root``."""
    rng = np.random.default_rng(seed)
    cat = root / category
    for folder, n in (("train/good", n_train), ("validation/good", n_val), ("test/good", n_good)):
        (cat / folder).mkdir(parents=True)
        for i in range(n):
            _image(rng).save(cat / folder / f"{i:03d}.png")
    for (defect, stem), masks in REGIONS.items():
        (cat / "test" / defect).mkdir(parents=True, exist_ok=True)
        _image(rng).save(cat / "test" / defect / f"{stem}.png")
        gt = cat / "ground_truth" / defect / stem
        gt.mkdir(parents=True)
        for k, (region, value) in enumerate(masks):
            m = np.zeros((H, W), np.uint8)
            m[region] = value
            Image.fromarray(m, "L").save(gt / f"{k:03d}.png")
    config = [{"defect_name": "x", "pixel_value": 17, "saturation_threshold": 1, "relative_saturation": False}]
    (cat / "defects_config.json").write_text(json.dumps(config))
    (root / "license.txt").write_text("fixture\n")
    return root


@pytest.fixture
def root(tmp_path):
    return write_loco(tmp_path / "loco")


def _match(path) -> str:
    return re.escape(str(path))


def test_train_split_is_train_good_only(root):
    s = mvtec_loco.load_split(root, "juice_bottle", "train", None)
    assert len(s) == 3 and s.split == "train" and s.category == "juice_bottle"
    assert all("/train/good/" in p for p in s.paths)  # validation/good is not used
    assert not any("validation" in f for f in s.files)
    assert s.labels.tolist() == [0, 0, 0] and s.defect_types == ["good"] * 3
    assert s.images.shape == (3, H, W, 3) and not any(m.any() for m in s.masks)


def test_test_split_ors_a_folder_of_masks(root):
    s = mvtec_loco.load_split(root, "juice_bottle", "test", 12)
    assert s.defect_types == ["good", "good", "logical_anomalies", "logical_anomalies", "structural_anomalies"]
    assert s.labels.tolist() == [0, 0, 1, 1, 1]
    assert s.images.shape == (5, 12, 12, 3)
    assert not s.masks[0].any() and not s.masks[1].any()
    for m, key in zip(s.masks[2:], REGIONS):
        assert m.dtype == bool and m.shape == (H, W)
        np.testing.assert_array_equal(m, loco_mask(*key), err_msg=str(key))
    # Both regions of logical 000, one stored as 255 and the other as 17, are defective.
    assert s.masks[2][3, 4] and s.masks[2][13, 15]
    gt = root / "juice_bottle" / "ground_truth"
    masks = {str(gt / d / stem / f"{k:03d}.png") for (d, stem), ms in REGIONS.items() for k in range(len(ms))}
    assert masks <= set(s.files) and len(s.files) == len(s.file_stats) == 5 + len(masks)
    assert len(set(s.keys)) == len(s)


def test_scan_records_every_mask_file(root):
    recs = mvtec_loco.scan_split(root, "juice_bottle", "test")
    logical0 = recs[2]
    assert logical0.key == ("test", "logical_anomalies", "000")
    assert [p.name for p in logical0.mask_paths] == ["000.png", "001.png"]
    assert all(p.parent.name == "000" for p in logical0.mask_paths)
    assert recs[0].mask_paths == ()


def test_registered_reader(root):
    write_loco(root, "pushpins", seed=1)
    r = get_reader("mvtec_loco")
    assert r is LAYOUTS["mvtec_loco"] and r.scan is mvtec_loco.scan_split and r.splits == ("train", "test")
    assert r.list_categories(root) == ["juice_bottle", "pushpins"]
    assert set(r.list_categories(root)) <= set(LOCO_CATEGORIES)
    s = r.load_split(root, "pushpins", "test", 8, resize="cv2_linear")
    assert s.images.shape == (5, 8, 8, 3) and s.labels.sum() == 3


# ----------------------------------------------------------------------------
# Bad input: one DatasetError naming the file or folder.


def test_missing_mask_folder_of_an_image(root):
    folder = root / "juice_bottle" / "ground_truth" / "logical_anomalies" / "001"
    shutil.rmtree(folder)
    with pytest.raises(
        DatasetError,
        match="No masks for the anomalous image .*logical_anomalies/001.png: expected the folder " + _match(folder),
    ):
        mvtec_loco.scan_split(root, "juice_bottle", "test")


def test_empty_mask_folder(root):
    folder = root / "juice_bottle" / "ground_truth" / "logical_anomalies" / "001"
    (folder / "000.png").unlink()
    with pytest.raises(DatasetError, match="Empty mask folder " + _match(folder)):
        mvtec_loco.scan_split(root, "juice_bottle", "test")


def test_mask_file_instead_of_folder(root):
    gt = root / "juice_bottle" / "ground_truth" / "structural_anomalies"
    shutil.rmtree(gt / "000")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(gt / "000.png")
    with pytest.raises(DatasetError, match="Unexpected file " + _match(gt / "000.png") + ".*holds only folders"):
        mvtec_loco.scan_split(root, "juice_bottle", "test")


def test_orphan_mask_folder(root):
    gt = root / "juice_bottle" / "ground_truth" / "logical_anomalies"
    shutil.copytree(gt / "001", gt / "007")
    with pytest.raises(DatasetError, match="Mask folder " + _match(gt / "007") + " has no image"):
        mvtec_loco.scan_split(root, "juice_bottle", "test")


def test_ground_truth_without_test_folder(root):
    gt = root / "juice_bottle" / "ground_truth" / "good"
    gt.mkdir()
    with pytest.raises(DatasetError, match="Mask folder " + _match(gt) + " has no image folder.*good images have no"):
        mvtec_loco.scan_split(root, "juice_bottle", "test")


def test_stray_file_in_test(root):
    stray = root / "juice_bottle" / "test" / "notes.txt"
    stray.write_text("x")
    with pytest.raises(DatasetError, match="Unexpected file " + _match(stray)):
        mvtec_loco.scan_split(root, "juice_bottle", "test")


def test_stray_file_in_mask_folder(root):
    stray = root / "juice_bottle" / "ground_truth" / "logical_anomalies" / "000" / "defects.json"
    stray.write_text("{}")
    with pytest.raises(DatasetError, match="Unexpected file " + _match(stray)):
        mvtec_loco.scan_split(root, "juice_bottle", "test")


def test_anomaly_folder_in_train(root):
    shutil.copytree(root / "juice_bottle" / "test" / "logical_anomalies", root / "juice_bottle" / "train" / "bad")
    with pytest.raises(DatasetError, match="Unexpected folder " + _match(root / "juice_bottle" / "train" / "bad")):
        mvtec_loco.scan_split(root, "juice_bottle", "train")


def test_validation_is_not_a_split(root):
    with pytest.raises(DatasetError, match="split must be one of .*validation/good is not read"):
        mvtec_loco.scan_split(root, "juice_bottle", "validation")


def test_mask_of_another_size(root):
    mask = root / "juice_bottle" / "ground_truth" / "logical_anomalies" / "000" / "001.png"
    Image.fromarray(np.full((H, W + 4), 17, np.uint8)).save(mask)
    with pytest.raises(DatasetError, match="Mask " + _match(mask) + f" is {W + 4}x{H}"):
        mvtec_loco.load_split(root, "juice_bottle", "test", 8)


def test_all_zero_mask_folder_is_read_and_warned(root, caplog):
    folder = root / "juice_bottle" / "ground_truth" / "logical_anomalies" / "001"
    Image.fromarray(np.zeros((H, W), np.uint8)).save(folder / "000.png")
    with caplog.at_level("WARNING", logger="jaxflow_ad"):
        s = mvtec_loco.load_split(root, "juice_bottle", "test", 8)
    assert s.labels[3] == 1 and not s.masks[3].any()
    msg = [r.getMessage() for r in caplog.records if "all-zero mask" in r.getMessage()]
    assert len(msg) == 1 and "logical_anomalies/001.png (mask 000.png)" in msg[0]
