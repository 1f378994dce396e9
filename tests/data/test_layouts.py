"""Readers chosen by config.data.layout."""

import re

import numpy as np
import pytest

from jaxflow_ad import data
from jaxflow_ad.data import LAYOUTS, DatasetError, Reader, get_reader

from .fixtures import write_mvtec


def test_mvtec_reader(tmp_path):
    root = write_mvtec(tmp_path / "mv")
    write_mvtec(root, "other")
    r = get_reader("mvtec")
    assert r is LAYOUTS["mvtec"] and r.name == "mvtec"
    assert r.modalities == ("image",) and r.spatial == ("image",) and r.splits == ("train", "test")
    assert r.list_categories(root) == ["other", "widget"]
    for split in r.splits:
        s = r.load_split(root, "widget", split, 12)
        assert tuple(s.samples) == r.modalities
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == (12, 12, 3)
        assert s.split == split and s.category == "widget"


def test_unknown_layout_names_the_config_key():
    with pytest.raises(DatasetError, match=re.escape("config key data.layout='mvtec4d' is not a known layout")) as e:
        get_reader("mvtec4d")
    assert isinstance(e.value, ValueError)
    assert re.search(r"use one of \[.*'mvtec'.*\]", str(e.value))
    with pytest.raises(DatasetError, match=re.escape("data.layout=None")):
        get_reader(None)


def test_reader_validates_its_declaration():
    kw = dict(splits=("train",), list_categories=data.list_categories, load_split=data.load_split)
    with pytest.raises(ValueError, match="must include 'image'"):
        Reader(name="x", modalities=("xyz",), spatial=(), **kw)
    with pytest.raises(ValueError, match=r"spatial keys \['depth'\] are not in modalities"):
        Reader(name="x", modalities=("image",), spatial=("image", "depth"), **kw)
