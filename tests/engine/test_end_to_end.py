"""End to end through the command line: smoke run, reports, kill-and-resume."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
REPORTS = ["metrics.json", "results.md", "config.json", "log.jsonl"]


def _main(workdir, *overrides, config="configs/pyramidflow.py:smoke"):
    return [sys.executable, "-m", "experiments.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")


@pytest.mark.timeout(420)
def test_smoke_end_to_end(tmp_path):
    proc = subprocess.run(_main(tmp_path / "run"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "run"
    for f in REPORTS:
        assert (run / f).exists(), f
    summary = json.loads((run / "metrics.json").read_text())
    cats = summary["categories"]
    assert set(cats) == {"gravel", "coin"}
    assert summary["mean"]["pixel_auroc"] >= 0.80, summary["mean"]
    for cat in cats:
        assert cats[cat]["train_time_s"] > 0 and cats[cat]["images_per_s"] > 0
        per_defect = json.loads((run / cat / "metrics.json").read_text())["per_defect"]
        assert len(per_defect) >= 3 and all(0 <= m["pixel_auroc"] <= 1 for m in per_defect.values())
        heat = list((run / cat / "heatmaps").glob("*.png"))
        kinds = {p.name.rsplit("_", 2)[0] for p in heat}  # <kind>_<rank>_<stem>.png
        assert "good" in kinds and len(kinds) >= 4, kinds  # good + every defect kind
        assert (run / cat / "image_template.png").exists()
    assert "| **mean** |" in (run / "results.md").read_text()
    assert "Per defect kind" in (run / "results.md").read_text()
    assert "| **mean** |" in proc.stdout  # the table is printed at the end
    assert list((run / "tb").rglob("events.out.tfevents.*"))


def _metrics(run):
    m = json.loads((run / "coin" / "metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in ("train_time_s", "images_per_s", "time_s")}


@pytest.mark.timeout(600)
@pytest.mark.slow  # the toy's kill tests (tests/engine/test_contract.py) keep resume in the default run
def test_kill_and_resume_gives_the_same_metrics(tmp_path):
    args = ["--config.data.categories=coin", "--config.train.epochs=4", "--config.train.checkpoint_every_steps=5"]
    a, b = tmp_path / "a", tmp_path / "b"
    proc = subprocess.Popen(_main(a, *args), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = a / "coin" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline:
        steps = [int(p.name) for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
        if steps and max(steps) >= 10:
            break
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.name) for p in ckpts.glob("*") if p.name.isdigit())
    assert killed_at < 60, "the run finished before the kill"
    assert not (a / "coin" / "metrics.json").exists()

    resumed = subprocess.run(_main(a, *args), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from step {killed_at}" in resumed.stderr
    fresh = subprocess.run(_main(b, *args), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-4000:]
    assert _metrics(a) == _metrics(b)
    # the resumed run logged the steps after the checkpoint only once more
    steps = [
        json.loads(l)["step"]
        for l in (a / "log.jsonl").read_text().splitlines()
        if json.loads(l).get("tag") == "coin" and "train/flow/loss" in json.loads(l)
    ]
    assert steps[-1] == 60


def test_bad_category_is_one_clear_error(tmp_path):
    proc = subprocess.run(
        _main(tmp_path / "r", "--config.data.categories=nope"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data.categories names ['nope']" in proc.stderr and "available" in proc.stderr


def test_bad_root_is_one_clear_error(tmp_path):
    proc = subprocess.run(
        _main(tmp_path / "r", f"--config.data.root={tmp_path / 'missing'}"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path / "missing") in proc.stderr
