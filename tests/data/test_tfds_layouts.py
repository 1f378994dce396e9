"""Every layout prepared as tfds ArrayRecord data and read back as the file reader reads it, without TensorFlow."""

import dataclasses
import logging
import re
import sys

import numpy as np
import pytest
from PIL import Image

from jaxflow_ad.data import LAYOUTS, DatasetError, Reader, get_reader, mvtec, tfds_source

from .fixtures import write_mvtec
from .test_btad import write_btad
from .test_dagm import write_class
from .test_eyecandies import write_eyecandies
from .test_folder_layout import write_folder
from .test_mvtec3d import write_mvtec3d
from .test_mvtec_loco import write_loco
from .test_visa import write_visa


def assert_same(got, want):
    """``got`` (read from tfds) equals ``want`` (the file reader's split), array for array."""
    assert sorted(got.samples) == sorted(want.samples)
    for key, a in want.samples.items():
        assert got.samples[key].dtype == a.dtype, key
        np.testing.assert_array_equal(got.samples[key], a, err_msg=key)
    assert len(got.masks) == len(want.masks)
    for m, w in zip(got.masks, want.masks):
        assert m.dtype == bool and m.shape == w.shape
        np.testing.assert_array_equal(m, w)
    assert got.labels.dtype == want.labels.dtype and got.labels.tolist() == want.labels.tolist()
    assert got.defect_types == want.defect_types and got.paths == want.paths
    assert (got.split, got.category, got.has_masks, got.settings) == (
        want.split,
        want.category,
        want.has_masks,
        want.settings,
    )
    assert got.files and all("array_record" in f for f in got.files) and len(got.file_stats) == len(got.files)
    assert len(got.fingerprint()) == 64


def check_layout(tmp_path, root, layout, category, sizes=(8,), resize="pil_bilinear", **options):
    """Prepare ``category`` and compare every split with the file reader's, for every size in ``sizes``."""
    data_dir = tmp_path / "tfds"
    builder = tfds_source.build_layout(root, layout, category, data_dir, num_workers=2, **options)
    assert builder.is_prepared() and builder.name == "layout_builder"
    reader = get_reader(layout)
    assert set(builder.as_data_source()) == set(reader.splits)
    for split in reader.splits:
        for size in sizes:
            want = reader.load_split(root, category, split, size, resize=resize, num_workers=1, **options)
            got = tfds_source.load_split_tfds(data_dir, layout, category, split, size, resize=resize, **options)
            assert_same(got, want)
    assert tfds_source.list_prepared(data_dir, layout, **options) == [category]
    assert "tensorflow" not in sys.modules
    return builder


def test_mvtec(tmp_path, caplog):
    root = write_mvtec(tmp_path / "mv")
    with caplog.at_level(logging.WARNING, "jaxflow_ad"):
        builder = check_layout(tmp_path, root, "mvtec", "widget", sizes=(8, None))
    # The file reader's warning about mixed modes is logged when preparing too.
    assert any("widget/test do not all have the same mode" in r.getMessage() for r in caplog.records)
    meta = builder.info.metadata
    assert meta["layout"] == "mvtec" and meta["category"] == "widget" and meta["has_masks"] is True
    ex = builder.as_data_source()["test"][0]
    assert (
        ex["image"].shape == (20, 24, 3) and ex["mask"].shape == (20, 24, 1) and set(np.unique(ex["mask"])) <= {0, 255}
    )
    # The same data under another layout that reads it alike, and another filter.
    check_layout(tmp_path, root, "mpdd", "widget", resize="cv2_linear")


def test_btad_with_mixed_native_sizes(tmp_path):
    root = write_btad(tmp_path / "btad", "01")
    # One image (and its mask) at another native size: load_split(image_size=None) cannot stack the split,
    # preparing (sample by sample) can.
    ko = root / "01" / "test" / "ko"
    Image.open(ko / "0000.bmp").resize((30, 18)).save(ko / "0000.bmp")
    gt = root / "01" / "ground_truth" / "ko" / "0000.png"
    Image.open(gt).resize((30, 18), Image.Resampling.NEAREST).save(gt)
    with pytest.raises(DatasetError, match="differ in size"):
        get_reader("btad").load_split(root, "01", "test", None)
    check_layout(tmp_path, root, "btad", "01")
    with pytest.raises(DatasetError, match="differ in size"):
        tfds_source.load_split_tfds(tmp_path / "tfds", "btad", "01", "test", None)


def test_visa(tmp_path):
    root = write_visa(tmp_path / "VisA")
    check_layout(tmp_path, root, "visa", "candle", sizes=(8, None))


def test_mvtec_loco(tmp_path):
    root = write_loco(tmp_path / "loco")
    check_layout(tmp_path, root, "mvtec_loco", "juice_bottle")


def test_dagm(tmp_path):
    write_class(tmp_path / "dagm")
    check_layout(tmp_path, tmp_path / "dagm", "dagm", "Class1", sizes=(8, None))


def test_folder_with_and_without_masks(tmp_path):
    write_folder(tmp_path / "parts" / "screws")
    write_folder(tmp_path / "plain" / "screws", masks=None)
    b = check_layout(tmp_path, tmp_path / "parts", "folder", "screws", mask_dir="masks", test_fraction=0.4)
    assert b.info.metadata["has_masks"] is True
    b2 = check_layout(tmp_path, tmp_path / "plain", "folder", "screws")
    assert b2.info.metadata["has_masks"] is False and b2.builder_config.name != b.builder_config.name
    # has_masks comes back from the prepared metadata
    assert not tfds_source.load_split_tfds(tmp_path / "tfds", "folder", "screws", "test", 8).has_masks
    # the options are part of the config: other options name data that is not prepared
    assert sorted(tfds_source.list_prepared(tmp_path / "tfds", "folder")) == ["screws"]
    with pytest.raises(DatasetError, match="is not prepared under"):
        tfds_source.load_split_tfds(tmp_path / "tfds", "folder", "screws", "test", 8, mask_dir="masks")


def test_mvtec3d_clouds_and_read_options(tmp_path):
    root = write_mvtec3d(tmp_path / "m3")
    builder = check_layout(tmp_path, root, "mvtec3d", "tire", sizes=(8, None))
    ex = builder.as_data_source()["train"][0]
    assert ex["xyz"].dtype == np.float32 and ex["xyz"].shape == (20, 16, 3) and np.isfinite(ex["xyz"]).all()
    # Cloud options are applied when reading, from the same prepared data.
    opts = dict(cloud_size=6, depth=True, clean=True, cache_dir=str(tmp_path / "cache"))
    for _ in range(2):  # computed, then read from the cache
        got = tfds_source.load_split_tfds(tmp_path / "tfds", "mvtec3d", "tire", "test", 8, **opts)
        assert_same(got, get_reader("mvtec3d").load_split(root, "tire", "test", 8, **opts))
    assert got.samples["depth"].shape == (5, 6, 6)
    with pytest.raises(DatasetError, match=re.escape("data.mvtec3d.cloud_size=-1")):
        tfds_source.load_split_tfds(tmp_path / "tfds", "mvtec3d", "tire", "test", 8, cloud_size=-1)
    assert "tensorflow" not in sys.modules


def test_eyecandies(tmp_path):
    root = write_eyecandies(tmp_path / "Eyecandies")
    check_layout(tmp_path, root, "eyecandies", "CandyCane", sizes=(8,), cloud_size=6)
    check_layout(tmp_path, root, "eyecandies", "CandyCane", sizes=(8,), image_index=5, depth=True)


def test_unknown_layout_read_through_its_load_split(tmp_path, monkeypatch):
    """A layout registered later, which this module does not know, is read through load_split(None)."""
    base = LAYOUTS["mvtec"]
    monkeypatch.setitem(LAYOUTS, "mvtec_like", dataclasses.replace(base, name="mvtec_like", scan=None))
    root = write_mvtec(tmp_path / "mv")
    check_layout(tmp_path, root, "mvtec_like", "widget", sizes=(8,))


def test_layout_errors_before_writing(tmp_path):
    root = write_btad(tmp_path / "btad", "01")
    mask = root / "01" / "ground_truth" / "ko" / "0001.png"
    mask.unlink()
    with pytest.raises(DatasetError, match="No mask for the defective image"):
        tfds_source.build_layout(root, "btad", "01", tmp_path / "tfds")
    assert not (tmp_path / "tfds" / "layout_builder").exists()
    with pytest.raises(DatasetError, match=re.escape("data.folder.nope")):
        tfds_source.build_layout(root, "folder", "01", tmp_path / "tfds", nope=1)
    with pytest.raises(DatasetError, match="data.layout='nope' is not a known layout"):
        tfds_source.build_layout(root, "nope", "01", tmp_path / "tfds")
    # A pixel-level error (found while preparing) leaves no prepared data either.
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(mask)
    with pytest.raises(DatasetError, match="is 3x3 \\(WxH\\)"):
        tfds_source.build_layout(root, "btad", "01", tmp_path / "tfds")
    assert tfds_source.list_prepared(tmp_path / "tfds", "btad") == []
    assert not list((tmp_path / "tfds" / "layout_builder").rglob("*.array_record*"))
    assert "tensorflow" not in sys.modules


def test_tfds_reader_prepares_on_demand(tmp_path, caplog):
    root = write_mvtec(tmp_path / "mv")
    write_mvtec(tmp_path / "mv", "gadget", seed=1)
    data_dir = tmp_path / "tfds"
    reader = tfds_source.tfds_reader("mvtec", data_dir)
    assert isinstance(reader, Reader)
    file_reader = get_reader("mvtec")
    assert (reader.name, reader.splits, reader.modalities, reader.options) == (
        "mvtec",
        file_reader.splits,
        file_reader.modalities,
        (),
    )
    # Nothing prepared: the categories under the root, layout errors from the file reader's scan.
    assert reader.list_categories(root) == ["gadget", "widget"] and reader.list_categories(None) == []
    assert [r.stem for r in reader.scan(root, "widget", "train")] == ["000", "001", "002"]
    with pytest.raises(DatasetError, match="'widget' of the mvtec layout .* is not prepared"):
        reader.load_split(None, "widget", "test", 8)
    got = reader.load_split(root, "widget", "test", 8, resize="cv2_linear", num_workers=2)  # prepares widget
    assert_same(got, file_reader.load_split(root, "widget", "test", 8, resize="cv2_linear"))
    assert reader.list_categories(None) == ["widget"] and reader.list_categories("") == ["widget"]
    assert reader.scan(None, "widget", "test") == 5
    # Once prepared, the raw files are not read again.
    (root / "widget" / "test" / "good" / "000.png").unlink()
    assert len(reader.load_split(root, "widget", "test", 8)) == 5
    assert len(reader.load_split(None, "widget", "train", 8)) == 3
    assert reader.list_categories(tmp_path / "elsewhere") == ["widget"]  # a missing root: what is prepared
    # Another root than the one prepared from: the prepared data is read, with a warning.
    other = write_mvtec(tmp_path / "other")
    with caplog.at_level(logging.WARNING, "jaxflow_ad"):
        assert len(reader.load_split(other, "widget", "train", 8)) == 3
    assert any(f"from {root}, not from {other}" in r.getMessage() for r in caplog.records)
    with pytest.raises(DatasetError, match="does not exist"):
        tfds_source.tfds_reader("mvtec", tmp_path / "empty").list_categories(tmp_path / "elsewhere")
    assert "tensorflow" not in sys.modules


def test_mvtec_builder_still_reads_the_same(tmp_path):
    """The MVTec-only builder and the generic one store the same pixels."""
    from jaxflow_ad.data import tfds_mvtec

    root = write_mvtec(tmp_path / "mv")
    old = tfds_mvtec.build_tfds(root, "widget", tmp_path / "old").as_data_source()["test"]
    new = tfds_source.build_layout(root, "mvtec", "widget", tmp_path / "new").as_data_source()["test"]
    assert len(old) == len(new) == len(mvtec.scan_split(root, "widget", "test"))
    for i in range(len(old)):
        for key in ("image", "mask", "label", "defect_type", "path"):
            np.testing.assert_array_equal(old[i][key], new[i][key])
