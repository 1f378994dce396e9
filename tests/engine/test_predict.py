"""``--mode=predict``: new images scored by a trained workdir, without its dataset."""

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from configs import pyramidflow as pf_config
from jaxflow_ad import data, engine


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.timeout(400)
def test_predict_equals_eval_reads_no_dataset_takes_any_image_and_resumes(tmp_path, monkeypatch, pyramidflow_smoke_run):
    cfg, trained = pyramidflow_smoke_run
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    evals = {r["path"].split("/test/")[1]: r for r in _rows(wd / "coin" / "scores.csv")}

    src = data.ensure_builtin(categories=["coin"]) / "coin" / "test"
    picks = [sorted((src / kind).glob("*.png"))[0] for kind in ("good", "chip", "scratch")]
    inp = tmp_path / "line"
    for p in picks:  # in sub-folders, as a camera might write them
        (inp / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, inp / p.parent.name / p.name)
    odd = np.asarray(Image.open(picks[1]))
    Image.fromarray(odd).resize((300, 200)).save(inp / "other_size.png")
    Image.fromarray(odd[..., 0].astype(np.uint16) * 257).save(inp / "gray16.png")
    Image.fromarray(odd).save(inp / "photo.jpg", quality=95)

    def no_dataset(*a, **k):
        raise AssertionError("predict read the dataset")

    monkeypatch.setitem(data.LAYOUTS, "mvtec", dataclasses.replace(data.LAYOUTS["mvtec"], load_split=no_dataset))
    pcfg = pf_config.get_config("smoke")
    pcfg.predict.input = str(inp)
    out = engine.run(pcfg, wd, "predict")["coin"]
    assert out["scored"] == 6 and out["skipped"] == 0
    pred = wd / "coin" / "predictions"
    rows = {r["path"]: r for r in _rows(pred / "predictions.csv")}
    thr = json.loads((wd / "coin" / "threshold.json").read_text())
    for p in picks:  # the same image scores the same as in --mode=eval
        r = rows[str(inp / p.parent.name / p.name)]
        e = evals[f"{p.parent.name}/{p.name}"]
        np.testing.assert_allclose(float(r["score"]), float(e["score"]), rtol=1e-5)
        assert r["decision"] == e["decision"] and float(r["threshold"]) == pytest.approx(thr["image"])
        assert float(r["normalized"]) == pytest.approx(float(e["normalized"]), abs=1e-6)
        assert (float(r["normalized"]) >= 0.5) == (r["decision"] == "1")
        name = f"{p.parent.name}__{p.stem}"
        size = cfg.data.image_size
        assert np.load(pred / "maps" / f"{name}.npy").shape == (size, size)
        assert Image.open(pred / "masks" / f"{name}.png").size == Image.open(p).size
        assert (pred / "heatmaps" / f"{name}.png").exists()
    assert Image.open(pred / "masks" / "other_size.png").size == (300, 200)
    gray = float(rows[str(inp / "gray16.png")]["score"])
    assert np.isfinite(gray) and np.isfinite(float(rows[str(inp / "photo.jpg")]["score"]))

    # resumable: a rerun scores only the images not yet in predictions.csv
    shutil.copy(picks[0], inp / "late.png")
    again = engine.run(pcfg, wd, "predict")["coin"]
    assert again["scored"] == 1 and again["skipped"] == 6
    assert len(_rows(pred / "predictions.csv")) == 7


def test_predict_without_input_or_training_is_one_clear_error(tmp_path):
    from jaxflow_ad.errors import CheckpointError, ConfigError

    cfg = pf_config.get_config("smoke")
    with pytest.raises(ConfigError, match="0 trained categories"):
        engine.run(cfg, tmp_path, "predict")
    cfg.predict.category = "gravel"
    with pytest.raises(CheckpointError, match="no trained category 'gravel'"):
        engine.run(cfg, tmp_path, "predict")
