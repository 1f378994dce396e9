"""FAIR end to end through the command line: the smoke config trains, evaluates and reports."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
REPORTS = ["metrics.json", "results.md", "config.json", "log.jsonl"]


def _env():
    # The run compiles the same train/score programs for each category; the persistent
    # compilation cache (the one tests/conftest.py uses) lets the second category and
    # later runs reuse them: about 2.5 min cold, 1.3 min warm at load average ~5 on 2 cores.
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))
    return dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
    )


@pytest.mark.timeout(420)
def test_fair_smoke_end_to_end(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.main", "--config=configs/fair.py:smoke", f"--workdir={run}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for f in REPORTS:
        assert (run / f).exists(), f
    summary = json.loads((run / "metrics.json").read_text())
    cats = summary["categories"]
    assert set(cats) == {"gravel", "coin"}
    assert summary["mean"]["pixel_auroc"] >= 0.75, summary["mean"]  # clearly above chance (0.5)
    for cat in cats:
        m = cats[cat]
        assert m["train_time_s"] > 0 and m["images_per_s"] > 0
        assert 0.0 <= m["pixel_auroc"] <= 1.0 and 0.0 <= m["image_auroc"] <= 1.0
        heat = list((run / cat / "heatmaps").glob("*.png"))
        kinds = {p.name.rsplit("_", 2)[0] for p in heat}  # <kind>_<rank>_<stem>.png
        assert "good" in kinds and len(kinds) >= 4, kinds  # good + every defect kind
        assert list((run / cat / "checkpoints").iterdir())
    losses = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("train/restoration/loss" in r for r in losses)
    assert "| **mean** |" in (run / "results.md").read_text()
    assert "| **mean** |" in proc.stdout  # the table is printed at the end
    assert list((run / "tb").rglob("events.out.tfevents.*"))
