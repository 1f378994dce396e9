"""Issue 17: bad input, concurrent runs, changed configs and broken checkpoints never cost a user their work.

Each test pins one failure a user met, with what they now see: one clear error (exit code 2 from the
command line), a fallback that keeps their work, or a warning naming the files."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import pyramidflow as pf_config
from jaxflow_ad import data, engine
from jaxflow_ad.engine import workdir as workdir_lib
from jaxflow_ad.errors import CheckpointError, TrainingDiverged, WorkdirError
from tests.data.fixtures import write_mvtec
from tests.engine import toy_method as toy

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _cli(*args, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "experiments.main", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _error_line(proc) -> str:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def _steps(workdir) -> list[int]:
    d = pathlib.Path(workdir) / "toy" / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _metrics(workdir):
    m = json.loads((pathlib.Path(workdir) / "toy" / "metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in ("train_time_s", "images_per_s", "time_s")}


def _pf_on(root: pathlib.Path) -> object:
    cfg = pf_config.get_config("smoke")
    cfg.data.update(root=str(root), categories="", image_size=16)
    cfg.model.update(channels=4, stacks=1, ksize=3, levels=2)
    cfg.train.update(batch_size=2, epochs=1)
    cfg.eval.batch_size = 2
    return cfg


# --------------------------------------------------------------------------- 8. flags and workdir


def test_bad_flags_and_workdirs_are_one_line_and_exit_code_2(tmp_path):
    """Every case of item 8 through the command line: one ``error:`` line naming the key, exit code 2."""
    afile = tmp_path / "a_file"
    afile.write_text("not a folder")
    smoke = "--config=configs/pyramidflow.py:smoke"
    cases = {
        "train.batch_size": [smoke, f"--workdir={tmp_path / 'w1'}", "--config.train.batch_size=0"],
        "eval.batch_size": [smoke, f"--workdir={tmp_path / 'w2'}", "--config.eval.batch_size=0"],
        "batch_size": [smoke, f"--workdir={tmp_path / 'w3'}", "--config.train.bach_size=2"],  # did you mean
        "is a file": [smoke, f"--workdir={afile}"],
        "configs/nope.py": ["--config=configs/nope.py", f"--workdir={tmp_path / 'w4'}"],
    }
    procs = {k: _cli(*v) for k, v in cases.items()}
    for expected, proc in procs.items():
        assert expected in _error_line(proc)


# --------------------------------------------------------------------------- 2. one run per workdir


def test_a_second_run_in_a_locked_workdir_exits_2_naming_the_holder(tmp_path):
    wd = workdir_lib.prepare(tmp_path / "run")
    with workdir_lib.WorkdirLock(wd):
        line = _error_line(_cli("--config=configs/pyramidflow.py:smoke", f"--workdir={wd}"))
    assert "in use by another run" in line and f"PID {os.getpid()}" in line
    assert not (wd / "config.json").exists()  # nothing written by the refused run


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, caplog):
    wd = workdir_lib.prepare(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (wd / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename, "started": "x"}))
    with caplog.at_level("INFO", "jaxflow_ad"), workdir_lib.WorkdirLock(wd):
        pass
    assert f"taken over from a run that ended (PID {int(dead.stdout)}" in caplog.text
    assert "no longer running" in caplog.text


# --------------------------------------------------------------------------- 3. changed configs


def test_a_changed_config_names_its_keys_and_leaves_config_json(tmp_path):
    cfg = toy.get_config()
    cfg.train.epochs_fit = 1
    engine.run(cfg, tmp_path, "all")
    saved = (tmp_path / "config.json").read_bytes()
    changed = toy.get_config()
    changed.train.epochs_fit = 1
    changed.train.batch_size = 4
    changed.model.extractor_seed = 3
    with pytest.raises(WorkdirError, match=r"(?s)model.extractor_seed: 0 -> 3.*train.batch_size: 2 -> 4"):
        engine.run(changed, tmp_path, "all")
    assert (tmp_path / "config.json").read_bytes() == saved
    # evaluation settings may change; --mode=eval takes the trained config and the new eval keys
    changed.eval.fpr_limit = 0.1
    result = engine.run(changed, tmp_path, "eval")["toy"]
    assert json.loads((tmp_path / "config.json").read_bytes()) == json.loads(saved)
    assert 0.0 <= result["aupro"] <= 1.0
    cfg.eval.fpr_limit = 0.1  # train/all with only free keys changed: allowed, and recorded
    engine.run(cfg, tmp_path, "all")
    assert json.loads((tmp_path / "config.json").read_text())["eval"]["fpr_limit"] == 0.1


def test_checkpoints_of_another_model_shape_are_refused_by_name(tmp_path):
    from jaxflow_ad.engine.checkpoint import Checkpointer, model_signature
    from jaxflow_ad.models.base import State

    def state(n):
        return State(
            step=np.zeros((), np.int32), params={"w": np.ones(n, np.float32)}, model_state={}, opt_state=(), stats={}
        )

    ck = Checkpointer(tmp_path)
    ck.check_model(model_signature("toy", state(3)))
    ck.save(1, state(3), force=True)
    ck.wait()
    ck.check_model(model_signature("toy", state(3)))  # the same model: fine
    with pytest.raises(CheckpointError, match=r"another model: 1 parameters of another shape \(\['w'\]: \[\[3\]"):
        ck.check_model(model_signature("toy", state(4)))
    with pytest.raises(CheckpointError, match="method 'toy', not 'other'"):
        ck.check_model(model_signature("other", state(3)))
    ck.close()


def test_fewer_epochs_than_the_checkpoints_is_one_clear_error(tmp_path):
    cfg = toy.get_config()
    engine.run(cfg, tmp_path, "train")
    shutil.copy(tmp_path / "config.json", tmp_path / "config.json.bak")
    (tmp_path / "config.json").unlink()  # as from a workdir of an older version: only the steps can tell
    cfg.train.epochs_fit = 1
    with pytest.raises(CheckpointError, match="past the 10 steps this config trains"):
        engine.run(cfg, tmp_path, "all")


# --------------------------------------------------------------------------- 4. broken checkpoints, NaN


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_step(tmp_path, caplog):
    args = dict(checkpoint_every_steps=4)
    cfg = toy.get_config()
    cfg.train.update(args)
    engine.run(cfg, tmp_path / "a", "all")
    engine.run(cfg, tmp_path / "b", "all")
    assert _steps(tmp_path / "a") == [12, 14]
    # damage step 14: truncate every file of its state item
    for f in (tmp_path / "a" / "toy" / "checkpoints" / "14" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")
    (tmp_path / "a" / "toy" / "metrics.json").unlink()
    with caplog.at_level("INFO", "jaxflow_ad"):
        engine.run(cfg, tmp_path / "a", "all")
    assert "checkpoint" in caplog.text and "cannot be read" in caplog.text
    assert "resumed from step 12" in caplog.text
    broken = list((tmp_path / "a" / "toy" / "checkpoints.broken").iterdir())
    assert len(broken) == 1 and broken[0].name.startswith("14-")  # kept, not deleted
    assert _steps(tmp_path / "a") == [12, 14]  # step 14 trained again
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")  # the same model as an undamaged run


def test_a_nan_stops_the_run_naming_step_and_batch_and_is_never_saved(tmp_path):
    cfg = toy.get_config()
    cfg.train.nan_step = 14  # the last step of the last stage
    with pytest.raises(TrainingDiverged, match=r"loss = nan at step 14 \(stage fit, epoch 3\) on the batch \['train/"):
        engine.run(cfg, tmp_path, "all")
    assert _steps(tmp_path) == [8]  # the end of stage 1; nothing from the poisoned step
    cfg.train.nan_step = -1  # a rerun with the fix resumes from the good step and finishes
    with pytest.raises(WorkdirError, match="train.nan_step: 14 -> -1"):
        engine.run(cfg, tmp_path, "all")
    assert np.isfinite(engine.run(cfg, tmp_path, "all", allow_config_change=True)["toy"]["pixel_auroc"])
    assert len(list(tmp_path.glob("config.*.json"))) == 1  # the config the first steps were trained with


# --------------------------------------------------------------------------- 5, 6. data problems before training


def test_a_root_one_level_too_high_or_too_deep_exits_2_with_the_fix(tmp_path):
    write_mvtec(tmp_path / "mvtec" / "inner", "widget")
    high = _cli(
        "--config=configs/pyramidflow.py:smoke",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.root={tmp_path / 'mvtec'}",
        "--config.data.categories=",
    )
    assert f"data.root={tmp_path / 'mvtec' / 'inner'}" in _error_line(high)
    with pytest.raises(data.DatasetError, match=f"use --config.data.root={tmp_path / 'mvtec' / 'inner'}$"):
        engine.run(_pf_on(tmp_path / "mvtec" / "inner" / "widget"), tmp_path / "w2", "all")


def test_a_broken_test_split_fails_before_the_first_training_step(tmp_path):
    root = write_mvtec(tmp_path / "data", "widget", n_train=4, defects={"crack": 2})
    bad = sorted((root / "widget" / "test" / "crack").glob("*.png"))[0]
    bad.write_bytes(b"")  # a zero-byte image: found only by decoding
    with pytest.raises(data.DatasetError, match=str(bad)):
        engine.run(_pf_on(root), tmp_path / "w", "all")
    assert not (tmp_path / "w" / "widget" / "checkpoints").exists() or not any(
        (tmp_path / "w" / "widget" / "checkpoints").iterdir()
    )
    assert "train/" not in (
        (tmp_path / "w" / "log.jsonl").read_text() if (tmp_path / "w" / "log.jsonl").exists() else ""
    )


def test_every_scanned_problem_of_every_category_in_one_report(tmp_path):
    root = write_mvtec(tmp_path / "data", "widget", n_train=4, defects={"crack": 2})
    write_mvtec(root, "gadget", n_train=4, defects={"dent": 2}, seed=1)
    next((root / "widget" / "ground_truth" / "crack").glob("*.png")).unlink()  # a defect image without mask
    (root / "gadget" / "test" / "dent" / "stray.txt").write_text("x")  # a stray file
    with pytest.raises(
        data.DatasetError, match=r"(?s)2 problems.*1\. gadget/test: Unexpected file.*2\. widget/test: No mask"
    ):
        engine.run(_pf_on(root), tmp_path / "w", "all")


# --------------------------------------------------------------------------- 9. a batch that drops images


def test_a_batch_size_that_does_not_divide_the_split_warns(caplog):
    cfg = toy.get_config()
    method = toy.ToyTwoStage(cfg)
    with caplog.at_level("WARNING", "jaxflow_ad"):
        engine.loop.plan_stages(method, cfg, 7, "toy")
    assert "uses 6 of the 7 training images per epoch (train.batch_size=2" in caplog.text


# --------------------------------------------------------------------------- 7. summaries across reruns


def test_a_rerun_with_fewer_categories_keeps_the_other_rows(tmp_path):
    from jaxflow_ad.engine import report

    row = dict(image_auroc=0.5, pixel_auroc=0.6, aupro=0.7)
    report.write_summary(tmp_path, {"a": row, "b": {**row, "image_auroc": 0.9}}, "{}")
    report.write_summary(tmp_path, {"a": {**row, "image_auroc": 0.7}}, "{}")  # only a rerun
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["categories"]["b"]["image_auroc"] == 0.9 and m["categories"]["a"]["image_auroc"] == 0.7
    assert m["mean"]["image_auroc"] == pytest.approx(0.8)
    text = (tmp_path / "results.md").read_text()
    assert "| a | 70.0" in text and "| b | 90.0" in text
