"""experiments/sweep.py: configs x categories x seeds into one CSV, mean and sd per cell, resumable."""

import csv

import numpy as np
import pytest

from experiments import sweep
from tests.engine import test_timing  # noqa: F401  (registers the two-category toy layout "toy_two")

TOY = "tests/engine/toy_method.py"


def test_sweep_appends_summarizes_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    sets = ["data.layout=toy_two", "train.epochs_fit=1"]
    sweep.sweep([TOY], ["toy", "twin"], [0, 1], out, sets)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["category"], r["seed"]) for r in rows] == [("toy", "0"), ("toy", "1"), ("twin", "0"), ("twin", "1")]
    summary = {r["category"]: r for r in csv.DictReader((out / "summary.csv").open())}
    x = np.array([float(r["pixel_auroc"]) for r in rows if r["category"] == "toy"])
    assert float(summary["toy"]["pixel_auroc_mean"]) == pytest.approx(x.mean(), abs=1e-6)
    assert float(summary["toy"]["pixel_auroc_sd"]) == pytest.approx(x.std(ddof=1), abs=1e-6)
    assert summary["toy"]["seeds"] == "2" and "±" in (out / "summary.md").read_text()
    # a rerun with one more seed runs only the new cells
    sweep.sweep([TOY], ["toy", "twin"], [0, 1, 2], out, sets)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 6 and sorted({r["seed"] for r in rows}) == ["0", "1", "2"]


def test_bad_override_names_it(tmp_path):
    with pytest.raises(KeyError):
        sweep.sweep([TOY], ["toy"], [0], tmp_path, ["train.nope=1"])
    with pytest.raises(FileNotFoundError, match="no config file"):
        sweep.sweep(["configs/nope.py"], ["toy"], [0], tmp_path, [])
