"""RGB + point-cloud samples through the engine: the built-in multimodal set in the MVTec 3D-AD layout,
read with the depth branch and plane/cluster cleaning, trained and evaluated by the toy two-stage
method (which learns the cloud's height from the image), with the per-sample preprocessing cached
once in the workdir."""

import ml_collections
import numpy as np

from jaxflow_ad import data, engine
from jaxflow_ad.data import mvtec3d
from tests.engine import toy_method


def test_mvtec3d_layout_trains_evaluates_and_preprocesses_each_file_once(tmp_path, monkeypatch):
    counts = dict(n_train=6, n_validation=2, n_test_good=3, n_test_per_defect=1)
    root = data.ensure_builtin3d(tmp_path / "b3d", categories=["puck"], size=64, **counts)
    cfg = toy_method.get_config()
    cfg.data.layout = "mvtec3d"
    cfg.data.root = str(root)
    cfg.data.categories = "puck"
    cfg.data.mvtec3d = ml_collections.ConfigDict({"clean": True, "depth": True})
    cleaned = []
    real = mvtec3d.clean_cloud
    monkeypatch.setattr(mvtec3d, "clean_cloud", lambda xyz, seed: cleaned.append(xyz.shape) or real(xyz, seed=seed))

    result = engine.run(cfg, tmp_path / "run", "all")["puck"]
    n_test = counts["n_test_good"] + len(data.DEFECT_KINDS_3D["puck"]) * counts["n_test_per_defect"]
    assert len(cleaned) == counts["n_train"] + n_test and set(cleaned) == {(64, 64, 3)}  # native size
    assert np.isfinite(result["image_auroc"]) and np.isfinite(result["pixel_auroc"])
    entries = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "puck" / "cache").glob("*.npz")}
    assert len(entries) == len(cleaned)

    again = engine.run(cfg, tmp_path / "run", "eval")["puck"]  # reads every split again: from the cache
    assert len(cleaned) == counts["n_train"] + n_test
    assert {p: p.stat().st_mtime_ns for p in entries} == entries
    assert again["image_auroc"] == result["image_auroc"]


def test_training_from_the_tfds_copy_gives_the_files_result(tmp_path):
    """``data.source=tfds``: the category prepared once as ArrayRecord (from ``data.root``) and trained
    from it; the metrics equal those of the same run read from the files."""
    root = data.ensure_builtin3d(
        tmp_path / "b3d", categories=["puck"], size=64, n_train=6, n_validation=2, n_test_good=3, n_test_per_defect=1
    )
    results = {}
    for source in ("files", "tfds"):
        cfg = toy_method.get_config()
        cfg.data.layout = "mvtec3d"
        cfg.data.root = str(root)
        cfg.data.categories = "puck"
        cfg.data.mvtec3d = ml_collections.ConfigDict({"depth": True})
        cfg.data.source = source
        cfg.data.tfds_dir = str(tmp_path / "tfds")
        results[source] = engine.run(cfg, tmp_path / source, "all")["puck"]
    assert (tmp_path / "tfds" / "layout_builder").is_dir()
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert results["tfds"][key] == results["files"][key], key
