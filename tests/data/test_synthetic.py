"""The built-in synthetic dataset: layout, determinism, exact masks, atomic writes."""

import hashlib
import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from jaxflow_ad import data
from jaxflow_ad.data import synthetic
from jaxflow_ad.data.mvtec import DatasetError

SMALL = dict(n_train=2, n_test_good=1, n_test_per_defect=1)


def _digest(root, category):
    h = hashlib.sha256()
    for p in sorted((root / category).rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return data.ensure_builtin(tmp_path_factory.mktemp("builtin"), **SMALL)


def test_catalogue():
    assert len(data.TEXTURE_CATEGORIES) >= 2 and len(data.OBJECT_CATEGORIES) >= 2
    assert set(data.BUILTIN_CATEGORIES) == set(data.TEXTURE_CATEGORIES) | set(data.OBJECT_CATEGORIES)
    for c in data.BUILTIN_CATEGORIES:
        assert len(set(data.DEFECT_KINDS[c])) >= 3
    assert data.is_texture("weave") and data.is_texture("carpet") and not data.is_texture("coin")


def test_layout_and_loader(small_root):
    assert data.list_categories(small_root) == sorted(data.BUILTIN_CATEGORIES)
    for c in data.BUILTIN_CATEGORIES:
        kinds = data.DEFECT_KINDS[c]
        cat = small_root / c
        assert sorted(p.name for p in (cat / "train" / "good").iterdir()) == ["000.png", "001.png"]
        for k in kinds:
            assert (cat / "ground_truth" / k / "000_mask.png").is_file()
        manifest = json.loads((cat / synthetic.MANIFEST).read_text())
        assert manifest["spec"]["format_version"] == synthetic.FORMAT_VERSION
        train = data.load_split(small_root, c, "train", 64)
        test = data.load_split(small_root, c, "test", None)
        assert train.images.shape == (2, 64, 64, 3)
        assert test.images.shape == (1 + len(kinds), 256, 256, 3)
        assert sorted(set(test.defect_types)) == sorted(("good",) + kinds)
        for label, m in zip(test.labels, test.masks):
            assert m.shape == (256, 256)
            assert (m.sum() >= 40) if label else not m.any()


def test_deterministic_bytes(tmp_path, small_root):
    again = data.ensure_builtin(tmp_path / "again", ["coin", "weave"], **SMALL)
    for c in ("coin", "weave"):
        assert _digest(again, c) == _digest(small_root, c)
    a = data.render_sample("gravel", "test", "hole", 3)
    b = data.render_sample("gravel", "test", "hole", 3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)


def test_files_are_render_sample(small_root):
    for c in data.BUILTIN_CATEGORIES:
        kind = data.DEFECT_KINDS[c][0]
        s = data.render_sample(c, "test", kind, 0)
        img = np.asarray(Image.open(small_root / c / "test" / kind / "000.png"))
        mask = np.asarray(Image.open(small_root / c / "ground_truth" / kind / "000_mask.png"))
        assert img.dtype == np.uint8 and img.shape == (256, 256, 3)
        np.testing.assert_array_equal(img, s.image)
        np.testing.assert_array_equal(mask > 0, s.mask)
        assert set(np.unique(mask)) <= {0, 255}


@pytest.mark.parametrize("category", data.BUILTIN_CATEGORIES)
def test_defects_change_exactly_the_mask(category):
    for kind in data.DEFECT_KINDS[category]:
        for i in range(2):
            s = data.render_sample(category, "test", kind, i)
            outside = ~s.mask
            np.testing.assert_array_equal(s.image[outside], s.clean[outside])
            changed = (s.image != s.clean).any(-1)
            assert s.mask.sum() >= 40
            assert changed[s.mask].mean() >= 0.75, (category, kind, i)
            # Visible: the mean absolute change inside the mask is not tiny.
            diff = np.abs(s.image.astype(int) - s.clean.astype(int))[s.mask].mean()
            assert diff > 12, (category, kind, i, diff)


@pytest.mark.parametrize("category", data.BUILTIN_CATEGORIES)
def test_normal_images_vary_but_good_equals_clean(category):
    a = data.render_sample(category, "train", "good", 0)
    b = data.render_sample(category, "train", "good", 1)
    g = data.render_sample(category, "test", "good", 0)
    np.testing.assert_array_equal(a.image, a.clean)
    assert not a.mask.any()
    assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() > 2
    assert not np.array_equal(g.image, a.image)


def test_incomplete_temp_dir_is_not_a_dataset(tmp_path):
    root = tmp_path / "b"
    tmp = root / ".coin.tmp-interrupted"
    (tmp / "train" / "good").mkdir(parents=True)
    (tmp / "train" / "good" / "000.png").write_bytes(b"half")
    data.ensure_builtin(root, ["coin"], **SMALL)
    assert data.list_categories(root) == ["coin"]
    assert len(data.load_split(root, "coin", "test", 32)) == 1 + len(data.DEFECT_KINDS["coin"])


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    root = tmp_path / "b"
    calls = []
    real = synthetic.render_sample

    def flaky(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args)

    monkeypatch.setattr(synthetic, "render_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        data.ensure_builtin(root, ["nut"], num_workers=1, **SMALL)
    assert list(root.iterdir()) == []  # neither the category nor a temp dir
    monkeypatch.setattr(synthetic, "render_sample", real)
    data.ensure_builtin(root, ["nut"], **SMALL)
    assert (root / "nut" / synthetic.MANIFEST).is_file()


def test_reuse_and_regenerate(tmp_path, monkeypatch):
    root = data.ensure_builtin(tmp_path / "b", ["weave"], **SMALL)
    manifest = root / "weave" / synthetic.MANIFEST
    stamp = manifest.stat().st_mtime_ns

    def fail(*a, **k):
        raise AssertionError("should have been reused")

    monkeypatch.setattr(synthetic, "_write_category", fail)
    data.ensure_builtin(root, ["weave"], **SMALL)  # complete: reused
    monkeypatch.undo()
    assert manifest.stat().st_mtime_ns == stamp
    # A missing file, other counts or another format version: regenerated.
    (root / "weave" / "test" / "good" / "000.png").unlink()
    data.ensure_builtin(root, ["weave"], **SMALL)
    assert (root / "weave" / "test" / "good" / "000.png").is_file()
    data.ensure_builtin(root, ["weave"], n_train=3, n_test_good=1, n_test_per_defect=1)
    assert len(list((root / "weave" / "train" / "good").iterdir())) == 3
    monkeypatch.setattr(synthetic, "FORMAT_VERSION", synthetic.FORMAT_VERSION + 1)
    data.ensure_builtin(root, ["weave"], n_train=3, n_test_good=1, n_test_per_defect=1)
    assert json.loads(manifest.read_text())["spec"]["format_version"] == synthetic.FORMAT_VERSION
    assert sorted(p.name for p in root.iterdir()) == ["weave"]


def test_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / "coin" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "coin")) + ".*not written by ensure_builtin"):
        data.ensure_builtin(tmp_path, ["coin"], **SMALL)


def test_default_root_and_bad_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXFLOW_AD_DATA", str(tmp_path / "here"))
    assert data.default_root() == tmp_path / "here"
    monkeypatch.delenv("JAXFLOW_AD_DATA")
    assert str(data.default_root()).endswith(".cache/jaxflow_ad/builtin")
    with pytest.raises(ValueError, match="Unknown built-in category 'bottle'"):
        data.ensure_builtin(tmp_path, ["bottle"])
    with pytest.raises(ValueError, match="n_train"):
        data.ensure_builtin(tmp_path, ["coin"], n_train=0)
    with pytest.raises(ValueError, match="'scratch' is not one of 'weave'"):
        data.render_sample("weave", "test", "scratch", 0)


@pytest.mark.slow
def test_full_size_generation(tmp_path):
    t = time.perf_counter()
    root = data.ensure_builtin(tmp_path)
    elapsed = time.perf_counter() - t
    assert elapsed < 60, elapsed
    for c in data.BUILTIN_CATEGORIES:
        train = data.load_split(root, c, "train", 256)
        test = data.load_split(root, c, "test", 256)
        assert len(train) >= 60 and len(test) >= 40
        good = (test.labels == 0).mean()
        assert 0.25 <= good <= 0.4
        for k in data.DEFECT_KINDS[c]:
            assert test.defect_types.count(k) >= 5
        assert all(m.any() == bool(label) for m, label in zip(test.masks, test.labels))
