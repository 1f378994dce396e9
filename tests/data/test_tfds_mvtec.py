"""The tfds builder on a tiny fixture, read back as NumPy without TensorFlow."""

import sys

import numpy as np
import pytest

from jaxflow_ad.data import DatasetError, load_split, tfds_mvtec

from .fixtures import write_mvtec


def test_build_and_read_back(tmp_path):
    root = write_mvtec(tmp_path / "mv")
    builder = tfds_mvtec.build_tfds(root, "widget", tmp_path / "tfds")
    assert builder.name == "mvtec_layout" and builder.builder_config.name == "widget"
    assert (tmp_path / "tfds" / "mvtec_layout" / "widget").is_dir()
    ds = builder.as_data_source()
    assert set(ds) == {"train", "test"}
    assert len(ds["train"]) == 3 and len(ds["test"]) == 5
    ref = load_split(root, "widget", "test", None)
    for i in range(len(ref)):
        ex = ds["test"][i]
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == ref.images[i].shape
        np.testing.assert_array_equal(ex["image"], ref.images[i])
        np.testing.assert_array_equal(ex["mask"][..., 0] > 0, ref.masks[i])
        assert int(ex["label"]) == ref.labels[i]
        assert ex["defect_type"].decode() == ref.defect_types[i]
        assert ex["path"].decode() == ref.paths[i]
    assert "tensorflow" not in sys.modules
    # Prepared once: a second call reuses the files.
    again = tfds_mvtec.build_tfds(root, "widget", tmp_path / "tfds")
    assert len(again.as_data_source()["test"]) == 5


def test_layout_error_before_writing(tmp_path):
    root = write_mvtec(tmp_path / "mv")
    (root / "widget" / "ground_truth" / "crack" / "000_mask.png").unlink()
    with pytest.raises(DatasetError, match="No mask for the defect image .*000.png"):
        tfds_mvtec.build_tfds(root, "widget", tmp_path / "tfds")
