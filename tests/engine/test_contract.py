"""The method contract, pinned with a toy two-stage method (tests/engine/toy_method.py): samples with an
``xyz`` modality, a frozen extractor run once per split and cached, a trainable mask per stage,
statistics refreshed during a stage and saved with the checkpoint, a kill right after the stage
boundary (and one in the middle of stage 2) resumed to the same metrics."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxflow_ad import engine
from jaxflow_ad.errors import CheckpointError
from tests.engine import toy_method as toy

ROOT = pathlib.Path(__file__).resolve().parents[2]
# align: 8 images / batch 2 = 4 steps x 2 epochs = steps 1-8; fit: 8 / 4 = 2 steps x 3 epochs = steps 9-14
ALIGN_END, FIT_END = 8, 14


def _saved(workdir, step):
    directory = pathlib.Path(workdir) / "toy" / "checkpoints"
    items = {"state": ocp.args.StandardRestore()}
    if (directory / str(step) / "stats").is_dir():
        items["stats"] = ocp.args.StandardRestore()
    mgr = ocp.CheckpointManager(directory, item_names=("state", "stats"))
    out = mgr.restore(step, args=ocp.args.Composite(**items))
    mgr.close()
    return out.state, (out.stats if "stats" in items else {})


def _metrics(workdir):
    m = json.loads((pathlib.Path(workdir) / "toy" / "metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in ("train_time_s", "images_per_s", "time_s")}


def test_two_stages_mask_cache_and_statistics(tmp_path):
    toy.CALLS["batches"] = 0
    cfg = toy.get_config()
    result = engine.run(cfg, tmp_path / "a", "all")["toy"]
    # the extractor ran once per split (8 train + 8 test images, batches of 4), not once per epoch
    assert toy.CALLS["batches"] == 4
    assert result["pixel_auroc"] > 0.6 and np.isfinite(result["image_auroc"])

    # stage 2 trained b only: a is bit-identical to the end of stage 1; stage 1 trained a only
    s1, _ = _saved(tmp_path / "a", ALIGN_END)
    s2, stats = _saved(tmp_path / "a", FIT_END)
    np.testing.assert_array_equal(s1["params"]["a"], s2["params"]["a"])
    assert np.abs(np.asarray(s1["params"]["b"]) - np.asarray(s2["params"]["b"])).max() > 1e-4
    method = toy.ToyTwoStage(cfg)
    init = method.init(jax.random.PRNGKey(cfg.seed), engine.loop.example_batch(method, toy._split("toy", "train")))
    np.testing.assert_array_equal(s1["params"]["b"], init.params["b"])
    assert np.abs(np.asarray(s1["params"]["a"]) - np.asarray(init.params["a"])).max() > 1e-4
    # the statistics are in the checkpoint, fitted on the 8 training images
    assert int(stats["count"]) == 8 and np.asarray(stats["center"]).shape == (2,)

    # statistics refreshed at the end of every epoch of stage 2 (refresh_statistics_every=1), never in stage 1
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    refits = [r["step"] for r in log if any(k.endswith("statistics_refit") for k in r)]
    assert refits == [10, 12, 14]
    # each stage logged under its own name
    assert any("train/align/mse" in r for r in log) and any("train/fit/loss" in r for r in log)

    # features are cached by the extractor's weights: the same weights reuse the files, others do not
    toy.CALLS["batches"] = 0
    engine.run(cfg, tmp_path / "a", "eval")
    assert toy.CALLS["batches"] == 0
    # --mode=eval evaluates with the config the workdir was trained with: another extractor seed is ignored
    cfg.model.extractor_seed = 1
    engine.run(cfg, tmp_path / "a", "eval")
    assert toy.CALLS["batches"] == 0
    # a copy of the workdir without its config.json takes the new seed: new features for the test split
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    (tmp_path / "c" / "config.json").unlink()
    engine.run(cfg, tmp_path / "c", "eval")
    assert toy.CALLS["batches"] == 2  # the test split again (the statistics came from the checkpoint)
    assert len(list((tmp_path / "c" / "toy" / "features").glob("*/meta.json"))) == 3


def _run_toy(workdir, *overrides, **popen):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    cmd = [sys.executable, str(ROOT / "tests/engine/toy_method.py"), str(workdir), *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    "kill_after",
    [
        pytest.param(ALIGN_END, id="stage_boundary", marks=pytest.mark.slow),
        pytest.param(12, id="mid_stage2_with_stats"),
    ],
)
def test_kill_and_resume_gives_the_same_metrics(tmp_path, kill_after):
    args = ["train.checkpoint_every_steps=4"]
    a, b = tmp_path / "a", tmp_path / "b"
    proc = _run_toy(a, *args, "train.sleep_s=0.4")
    marker = a / "toy" / "checkpoints" / str(kill_after) / "commit_success.txt"
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = sorted(int(p.name) for p in (a / "toy" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == kill_after, steps
    assert not (a / "toy" / "metrics.json").exists()

    resumed = _run_toy(a, *args, "train.sleep_s=0.4")  # the same config (a changed one is refused)
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-4000:]
    assert f"resumed from step {kill_after}" in err
    fresh = _run_toy(b, *args)
    out_b, err_b = fresh.communicate(timeout=240)
    assert fresh.returncode == 0, err_b[-4000:]
    assert _metrics(a) == _metrics(b)
    sa, stats_a = _saved(a, FIT_END)
    sb, stats_b = _saved(b, FIT_END)
    for x, y in zip(
        jax.tree_util.tree_leaves((sa["params"], stats_a)), jax.tree_util.tree_leaves((sb["params"], stats_b))
    ):
        np.testing.assert_array_equal(x, y)


def test_a_checkpoint_from_before_the_contract_is_one_clear_error(tmp_path):
    from jaxflow_ad.engine.checkpoint import Checkpointer
    from jaxflow_ad.models.base import State

    old = ocp.CheckpointManager(tmp_path / "ck", options=ocp.CheckpointManagerOptions(create=True))
    old.save(5, args=ocp.args.StandardSave({"params": np.ones(3, np.float32)}), force=True)  # the old single item
    old.wait_until_finished()
    old.close()
    target = State(step=np.zeros((), np.int32), params=np.ones(3, np.float32), model_state={}, opt_state=(), stats={})
    ck = Checkpointer(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="before the method contract.*new --workdir"):
        ck.restore(target)
    with pytest.raises(CheckpointError, match="before the method contract"):  # not taken for a damaged step
        ck.restore_newest(lambda step: target)
    assert (tmp_path / "ck" / "5").is_dir()
    ck.close()


def test_threshold_on_held_out_normal_images(tmp_path):
    """``eval.threshold.holdout``: a fixed quarter of train/good kept out of training (and of the
    statistics), the threshold a quantile of their scores, decisions on the test split counted."""
    from jaxflow_ad.engine.loop import holdout_split

    cfg = toy.get_config()
    cfg.eval.threshold.holdout = 0.25
    cfg.eval.threshold.quantile = 1.0
    cfg.train.epochs_fit = 1
    train = toy._split("toy", "train")
    fit, held = holdout_split(cfg, train)
    again, held_again = holdout_split(cfg, train)
    assert len(held) == 2 and len(fit) == 6 and held.paths == held_again.paths and fit.paths == again.paths
    assert not set(held.paths) & set(fit.paths) and sorted(held.paths + fit.paths) == train.paths
    assert len({fit.fingerprint(), held.fingerprint(), train.fingerprint()}) == 3  # no shared feature cache entry

    result = engine.run(cfg, tmp_path, "all")["toy"]
    thr = json.loads((tmp_path / "toy" / "threshold.json").read_text())
    assert thr["images"] == 2 and thr["quantile"] == 1.0 and thr["image"] == thr["holdout_max"]
    _, stats = _saved(tmp_path, 3 * 2 + 1)  # align: 6 images / batch 2 = 3 steps x 2 epochs; fit: 1 step
    assert int(stats["count"]) == 6  # statistics fitted without the held-out images
    t = result["threshold"]
    assert t["tp"] + t["fn"] == 4 and t["fp"] + t["tn"] == 4 and t["image"] == thr["image"]
    assert result["image_false_alarm_rate"] == t["fp"] / 4 and result["image_recall"] == t["tp"] / 4
    assert "I-F1@t" in (tmp_path / "results.md").read_text()
    again = engine.run(cfg, tmp_path, "eval")["toy"]  # evaluate-only: the same images held out, the same threshold
    assert again["threshold"]["image"] == thr["image"] and again["image_f1"] == result["image_f1"]

    cfg.eval.threshold.holdout = 1.0
    with pytest.raises(ValueError, match="eval.threshold.holdout"):
        holdout_split(cfg, train)


def test_a_manual_threshold_gives_decisions_without_a_holdout(tmp_path):
    cfg = toy.get_config()
    cfg.train.epochs_fit = 1
    cfg.eval.threshold.manual = "0.05"
    r = engine.run(cfg, tmp_path, "all")["toy"]
    assert r["threshold"]["source"] == "manual" and r["threshold"]["image"] == 0.05
    assert r["operating_point"]["threshold"] == 0.05
    assert json.loads((tmp_path / "toy" / "threshold.json").read_text())["image"] == 0.05
