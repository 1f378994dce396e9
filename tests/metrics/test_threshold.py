"""Decisions at a fixed threshold against scikit-learn and hand-counted cases."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from jaxflow_ad.metrics import classification_at, f1_max, quantile_threshold


def test_by_hand():
    labels = [0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.5, 0.9, 0.4, 0.5, 0.8, 0.95]
    r = classification_at(labels, scores, 0.5)  # >= 0.5: good 0.5, 0.9 flagged; defects 0.5, 0.8, 0.95 caught
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (3, 2, 1, 1)
    assert r["precision"] == pytest.approx(3 / 5)
    assert r["recall"] == pytest.approx(3 / 4)
    assert r["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert r["false_alarm_rate"] == pytest.approx(2 / 3)
    assert r["miss_rate"] == pytest.approx(1 / 4)


def test_equals_scikit_learn_on_random_scores():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + labels
    for t in (-0.5, 0.3, 1.2):
        r = classification_at(labels, scores, t)
        pred = scores >= t
        assert r["precision"] == pytest.approx(precision_score(labels, pred))
        assert r["recall"] == pytest.approx(recall_score(labels, pred))
        assert r["f1"] == pytest.approx(f1_score(labels, pred))


def test_f1_max_threshold_reproduces_f1_max():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 100)
    scores = rng.normal(size=100) + 1.5 * labels
    best, t = f1_max(labels, scores, return_threshold=True)
    assert classification_at(labels, scores, t)["f1"] == pytest.approx(best)


def test_nothing_flagged_and_no_good_images():
    r = classification_at([0, 1], [0.1, 0.2], 5.0)
    assert r["precision"] == 0.0 and r["recall"] == 0.0 and r["f1"] == 0.0 and r["miss_rate"] == 1.0
    assert np.isnan(classification_at([1, 1], [0.1, 0.2], 0.0)["false_alarm_rate"])


def test_quantile_threshold_false_alarms_on_fresh_normals_near_one_minus_q():
    rng = np.random.default_rng(2)
    t = quantile_threshold(rng.normal(size=20000), 0.95)
    fresh = rng.normal(size=20000)
    assert np.mean(fresh >= t) == pytest.approx(0.05, abs=0.01)
    assert quantile_threshold([3.0, 1.0, 2.0], 1.0) == 3.0


@pytest.mark.parametrize(
    "scores, q, match",
    [([1.0], 0.0, "eval.threshold.quantile"), ([], 0.9, "at least one"), ([1.0, np.nan], 0.9, "not finite")],
)
def test_quantile_threshold_rejects(scores, q, match):
    with pytest.raises(ValueError, match=match):
        quantile_threshold(scores, q)
