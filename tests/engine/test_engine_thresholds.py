"""Decision thresholds fitted after training, on the shared trained PyramidFlow workdir: (b) a quantile
of held-out normal images keeps the false-alarm rate on the test split's good images where the
quantile puts it; (a) F1-optimal on a labelled validation split reproduces ``metrics.image_f1_max``."""

import csv
import json
import shutil

import numpy as np
import pytest
from scipy import stats

from jaxflow_ad import data, engine, metrics
from jaxflow_ad.errors import ConfigError


def _scores(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([int(r["label"]) for r in rows]), np.array([float(r["score"]) for r in rows])


def test_quantile_threshold_false_alarm_rate_is_what_the_quantile_promises(pyramidflow_smoke_run):
    cfg, wd = pyramidflow_smoke_run
    m = json.loads((wd / "metrics.json").read_text())["categories"]["coin"]
    thr = json.loads((wd / "coin" / "threshold.json").read_text())
    assert thr["source"] == "holdout" and m["threshold"]["image"] == thr["image"]
    labels, scores = _scores(wd / "coin" / "scores.csv")
    good = scores[labels == 0]
    fa = float(np.mean(good >= thr["image"]))
    assert m["image_false_alarm_rate"] == pytest.approx(fa)
    # With k held-out normal scores, NumPy's q-quantile lies between the order statistics j = floor(q(k-1)) + 1
    # and j + 1 (1-based); a new normal image exceeds the j-th with probability (k + 1 - j) / (k + 1) (the
    # order statistics of exchangeable scores). The false alarms on the test's good images are then at
    # most Binomial(n_good, that), bounded here at its 99.9 % quantile. A threshold fitted on the wrong
    # images, at the wrong quantile or compared the wrong way round fails this.
    k, q = thr["images"], thr["quantile"]
    j = int(np.floor(q * (k - 1))) + 1
    p_exceed = (k + 1 - j) / (k + 1)
    bound = stats.binom.ppf(0.999, len(good), p_exceed) / len(good)
    assert fa <= bound, (fa, bound, k, q)
    assert thr["holdout_min"] <= thr["holdout_median"] <= thr["image"] <= thr["holdout_max"]
    # and it separates: most defective images are flagged at it
    assert m["image_recall"] >= 0.6, m["image_recall"]


def test_f1_optimal_threshold_on_a_labelled_validation_split(tmp_path, pyramidflow_smoke_run):
    cfg, trained = pyramidflow_smoke_run
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    ecfg = cfg.copy_and_resolve_references()
    ecfg.eval.threshold.validation_root = str(data.ensure_builtin(categories=["coin"]))
    ecfg.eval.threshold.validation_split = "test"  # the built-in test split stands in for a labelled validation set
    r = engine.run(ecfg, wd, "eval")["coin"]
    thr = json.loads((wd / "coin" / "threshold.json").read_text())
    assert thr["source"] == "validation" and thr["split"].endswith("coin/test")
    labels, scores = _scores(wd / "coin" / "scores.csv")
    f1, expected = metrics.image_f1_max(labels, scores, return_threshold=True)
    assert thr["image"] == pytest.approx(expected, rel=1e-6) and thr["validation_f1"] == pytest.approx(f1)
    assert r["image_f1"] == pytest.approx(r["image_f1_max"])  # at it, the test split's F1 is its maximum
    assert np.isfinite(thr["pixel"]) and 0 < thr["validation_pixel_f1"] <= 1
    assert thr["holdout_min"] == pytest.approx(scores[labels == 0].min(), rel=1e-6)


def test_a_validation_split_without_defects_is_one_clear_error(tmp_path, pyramidflow_smoke_run):
    cfg, trained = pyramidflow_smoke_run
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    ecfg = cfg.copy_and_resolve_references()
    ecfg.eval.threshold.validation_root = str(data.ensure_builtin(categories=["coin"]))
    ecfg.eval.threshold.validation_split = "train"
    with pytest.raises(ConfigError, match="only good images .* needs both good and defective"):
        engine.run(ecfg, wd, "eval")
    ecfg.eval.threshold.validation_split = "validation"
    with pytest.raises(ConfigError, match="not a split of the 'mvtec' layout"):
        engine.run(ecfg, wd, "eval")
