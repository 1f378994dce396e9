"""The layout registry beyond MVTec AD and DAGM: MPDD (an alias of the MVTec AD reader), every
registered reader, and Split.has_masks."""

import re
import shutil

import numpy as np
import pytest

from jaxflow_ad.data import LAYOUTS, MPDD_CATEGORIES, DatasetError, Split, get_reader, mpdd, mvtec

from .fixtures import H, W, mask_array, write_mvtec


def test_every_layout_is_registered():
    assert {"mvtec", "mpdd", "btad", "visa", "mvtec_loco", "folder", "dagm", "mvtec3d", "eyecandies"} <= set(LAYOUTS)
    ours = {n: r for n, r in LAYOUTS.items() if not n.startswith("toy")}  # tests register toy layouts too
    three_d = ("mvtec3d", "eyecandies")  # RGB + point cloud, with a validation split (tests/data/test_mvtec3d.py)
    for name, reader in ours.items():
        assert get_reader(name) is reader and reader.name == name
        assert reader.scan is not None, name
        if name in three_d:
            assert reader.modalities == ("image", "xyz", "depth", "foreground"), name
            assert reader.splits == ("train", "validation", "test"), name
        else:
            assert reader.modalities == ("image",) and reader.splits == ("train", "test")
    # Only the folder layout and the point-cloud layouts take options.
    assert [name for name, r in ours.items() if r.options] == ["folder", *three_d]


def test_mpdd_is_the_mvtec_reader_on_mpdd_categories(tmp_path):
    root = tmp_path / "MPDD"
    write_mvtec(root, "bracket_black", defects={"hole": 2, "scratches": 1})
    write_mvtec(root, "tubes", defects={"anomalous": 1}, seed=1)
    r = get_reader("mpdd")
    assert r is LAYOUTS["mpdd"]
    assert (r.list_categories, r.load_split, r.scan) == (mvtec.list_categories, mvtec.load_split, mvtec.scan_split)
    assert mpdd.load_split is mvtec.load_split
    assert r.list_categories(root) == ["bracket_black", "tubes"]
    assert set(r.list_categories(root)) <= set(MPDD_CATEGORIES)
    s = r.load_split(root, "bracket_black", "test", 12)
    assert s.defect_types == ["good", "good", "hole", "hole", "scratches"] and s.labels.tolist() == [0, 0, 1, 1, 1]
    assert s.has_masks and s.images.shape == (5, 12, 12, 3)
    np.testing.assert_array_equal(s.masks[3], mask_array(1))
    assert len(r.load_split(root, "tubes", "train", 12)) == 3


def test_mpdd_scan_catches_a_missing_mask(tmp_path):
    root = write_mvtec(tmp_path / "MPDD", "metal_plate", defects={"major_rust": 1})
    mask = root / "metal_plate" / "ground_truth" / "major_rust" / "000_mask.png"
    mask.unlink()
    with pytest.raises(
        DatasetError, match="No mask for the defect image .*major_rust/000.png: expected " + re.escape(str(mask))
    ):
        get_reader("mpdd").scan(root, "metal_plate", "test")


def _split(**kw):
    n = 3
    return Split(
        samples={"image": np.zeros((n, 4, 4, 3), np.uint8)},
        masks=[np.zeros((H, W), bool)] * n,
        labels=np.array([0, 1, 1], np.int32),
        defect_types=["good", "x", "x"],
        paths=[f"/d/{i}.png" for i in range(n)],
        split="test",
        category="c",
        **kw,
    )


def test_split_has_masks_defaults_true_and_survives_copies():
    assert _split().has_masks
    s = _split(has_masks=False)
    assert not s.subset([0, 2], "hold").has_masks
    assert not s.with_samples(extra=np.ones((3, 2), np.float32)).has_masks
    assert s.subset([1], "hold").labels.tolist() == [1]


def test_mvtec_split_has_masks(tmp_path):
    root = write_mvtec(tmp_path / "mv")
    assert mvtec.load_split(root, "widget", "test", 8).has_masks


def test_record_mask_paths(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert mvtec.Record("test", "good", "0", a, None).mask_paths == ()
    assert mvtec.Record("test", "x", "0", a, b).mask_paths == (b,)
    assert mvtec.Record("test", "x", "0", a, b, (a,)).mask_paths == (b, a)


def test_more_masks_are_ored_by_the_shared_loader(tmp_path):
    """Record.more_masks (MVTec LOCO AD's mask folders) through the MVTec AD loader: the masks OR-ed."""
    root = write_mvtec(tmp_path / "mv", defects={"crack": 2})
    gt = root / "widget" / "ground_truth" / "crack"
    shutil.copy(gt / "001_mask.png", tmp_path / "extra.png")
    recs = mvtec.scan_split(root, "widget", "test")
    first = next(i for i, r in enumerate(recs) if r.defect_type == "crack")
    r = recs[first]
    recs[first] = mvtec.Record(r.split, r.defect_type, r.stem, r.image_path, r.mask_path, (tmp_path / "extra.png",))
    s = mvtec._load_records(recs, "widget", "test", 8, "pil_bilinear", 1)
    np.testing.assert_array_equal(s.masks[first], mask_array(0) | mask_array(1))
    assert str(tmp_path / "extra.png") in s.files and len(s.files) == len(s.file_stats)
