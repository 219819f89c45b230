import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, auc, f1_score, precision_score, recall_score, roc_auc_score, roc_curve

from nnunet_liver.evaluation.classification_metrics import (
    auc_score,
    binary_metrics,
    bootstrap_ci,
    roc_points,
    summarize_folds,
)


def random_case(n, seed, separation=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    # Rounded scores create ties, which AUC must count as 1/2.
    p = np.round(1 / (1 + np.exp(-(separation * (2 * y - 1) + rng.normal(size=n)))), 2)
    return y, p


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_binary_metrics_match_sklearn(seed, threshold):
    y, p = random_case(80, seed)
    pred = (p >= threshold).astype(int)
    m = binary_metrics(y, p, threshold)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert m["ppv"] == pytest.approx(precision_score(y, pred))
    assert m["npv"] == pytest.approx(precision_score(y, pred, pos_label=0))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == m["n"] == 80


def test_zero_divisions_are_nan():
    m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.9])
    assert math.isnan(m["sensitivity"]) and math.isnan(m["auc"])
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["ppv"] == 0.0 and m["f1"] == 0.0
    m = binary_metrics([1, 0], [0.1, 0.2])  # nothing predicted positive
    assert math.isnan(m["ppv"])
    assert m["npv"] == 0.5 and m["f1"] == 0.0
    m = binary_metrics([0, 0], [0.1, 0.2])  # no positives, no positive predictions
    assert math.isnan(m["f1"]) and m["accuracy"] == 1.0


def test_input_validation():
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError):
        binary_metrics([0, 2], [0.5, 0.5])


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    widths = []
    for n in (60, 600):
        y, p = random_case(n, seed=3)
        for metric in ("auc", "accuracy", "sensitivity"):
            low, high = bootstrap_ci(y, p, metric, n_boot=400, seed=1)
            est = binary_metrics(y, p)[metric]
            assert low <= est <= high, (metric, n)
            if metric == "auc":
                widths.append(high - low)
    assert widths[1] < 0.6 * widths[0]


def test_bootstrap_is_stratified_and_seeded():
    y = np.array([1] * 3 + [0] * 30)
    p = np.linspace(0, 1, 33)
    seen = []

    def n_pos(yy, _pp):
        seen.append(yy.sum())
        return float(yy.mean())

    low, high = bootstrap_ci(y, p, n_pos, n_boot=50)
    assert set(seen) == {3}  # class counts are kept in every replicate
    assert low == high == pytest.approx(3 / 33)
    assert bootstrap_ci(y, p, "auc", n_boot=50, seed=4) == bootstrap_ci(y, p, "auc", n_boot=50, seed=4)


def test_bootstrap_over_patients_keeps_groups_together():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 3)
    y = np.tile([0, 1, 1], 20)
    p = np.clip(y * 0.4 + rng.uniform(0, 0.6, y.size), 0, 1)
    sizes = []

    def record(yy, pp):
        sizes.append(yy.size)
        return auc_score(yy, pp)

    low, high = bootstrap_ci(y, p, record, n_boot=100, groups=groups)
    assert all(s % 3 == 0 for s in sizes)
    assert low <= auc_score(y, p) <= high
    with pytest.raises(ValueError):
        bootstrap_ci(y, p, "auc", groups=groups[:-1])
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(y, p, "youden")


def test_roc_points_match_sklearn():
    y, p = random_case(50, seed=2)
    fpr, tpr, thr = roc_points(y, p)
    ref = roc_curve(y, p, drop_intermediate=False)
    for a, b in zip((fpr, tpr, thr), ref, strict=True):
        np.testing.assert_allclose(a, b)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert auc(fpr, tpr) == pytest.approx(roc_auc_score(y, p))


def test_summarize_folds():
    folds = {f: random_case(40, seed=f) for f in range(5)}
    s = summarize_folds(folds)
    assert set(s["per_fold"]) == set(range(5))
    accs = [binary_metrics(*folds[f])["accuracy"] for f in range(5)]
    assert s["mean"]["accuracy"] == pytest.approx(np.mean(accs))
    assert s["std"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    y = np.concatenate([folds[f][0] for f in range(5)])
    p = np.concatenate([folds[f][1] for f in range(5)])
    assert s["pooled"]["auc"] == pytest.approx(roc_auc_score(y, p))
    assert s["pooled"]["n"] == 200
    listed = summarize_folds(list(folds.values()))
    assert listed["mean"] == s["mean"]
