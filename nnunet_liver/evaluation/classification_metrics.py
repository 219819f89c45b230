"""Lesion-level classification metrics (paper.md 3.3 / Table 2): point estimates, bootstrap CIs, ROC, folds.

Conventions: label 1 = malignant (positive), ``y_prob`` = P(malignant), prediction = ``y_prob >= threshold``.
A ratio whose denominator is zero (e.g. sensitivity without positives, PPV without positive predictions) is
NaN, never 0 or 1, so an undefined metric cannot pass for a good or bad one; AUC is NaN when one class is
absent. Sensitivity, specificity and F1 come from the segmentation metrics' confusion-matrix arithmetic
(``nnunet_liver.evaluation.lits.overlap_metrics``: positives are the reference mask, positive predictions the
predicted one, F1 is its Dice); only its convention for two empty masks (a perfect score) is replaced by
NaN here. numpy/scipy/scikit-learn only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_curve

from nnunet_liver.evaluation.lits import overlap_metrics

__all__ = [
    "METRIC_NAMES",
    "binary_metrics",
    "auc_score",
    "bootstrap_ci",
    "roc_points",
    "summarize_folds",
]

METRIC_NAMES = ("accuracy", "sensitivity", "specificity", "auc", "ppv", "npv", "f1")

Metric = str | Callable[[np.ndarray, np.ndarray], float]


def _as_arrays(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true and y_prob differ in length: {y.size} vs {p.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be 0/1")
    return y.astype(np.int64), p


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def auc_score(y_true, y_prob) -> float:
    """ROC AUC (Mann-Whitney with midranks, ties count 1/2); NaN if a class is absent."""
    y, p = _as_arrays(y_true, y_prob)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(y_true, y_prob, threshold: float = 0.5) -> dict[str, float]:
    """Confusion-matrix metrics and AUC for binary predictions.

    Args:
        y_true: (n,) labels in {0, 1}.
        y_prob: (n,) scores, P(positive).
        threshold: positive prediction when ``y_prob >= threshold``.

    Returns:
        Dict with accuracy, sensitivity (recall), specificity, auc, ppv (precision), npv, f1 (NaN where the
        denominator is zero: f1 is NaN only when there are no positives and no positive predictions), and the
        counts n, tp, fp, tn, fn.
    """
    y, p = _as_arrays(y_true, y_prob)
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    overlap = overlap_metrics(n_reference=tp + fn, n_prediction=tp + fp, n_intersection=tp, n_total=y.size)
    if tp + fn + fp == 0:  # no positives and none predicted: segmentation's "both empty, perfect" is undefined here
        overlap.update(sensitivity=float("nan"), specificity=_ratio(tn, tn + fp), dice=float("nan"))
    return {
        "accuracy": _ratio(tp + tn, y.size),
        "sensitivity": overlap["sensitivity"],
        "specificity": overlap["specificity"],
        "auc": auc_score(y, p),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": overlap["dice"],
        "n": y.size,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _metric_fn(metric: Metric, threshold: float) -> Callable[[np.ndarray, np.ndarray], float]:
    if callable(metric):
        return metric
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRIC_NAMES} or a callable")
    if metric == "auc":
        return auc_score
    return lambda y, p: binary_metrics(y, p, threshold)[metric]


def bootstrap_ci(
    y_true,
    y_prob,
    metric: Metric,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    *,
    groups: Sequence | np.ndarray | None = None,
    threshold: float = 0.5,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a metric.

    Without ``groups`` lesions are resampled with replacement *within each class* (stratified), so every
    replicate keeps the observed class counts and AUC is always defined. With ``groups`` (e.g. patient ids)
    whole groups are resampled, keeping lesions of one patient together; replicates that lose a class or give
    a NaN metric are redrawn (up to ``10 * n_boot`` draws in all).

    Args:
        y_true: (n,) labels in {0, 1}.
        y_prob: (n,) scores.
        metric: a name from :data:`METRIC_NAMES` or ``f(y_true, y_prob) -> float``.
        n_boot: number of valid replicates.
        alpha: 1 - coverage; the interval is the [alpha/2, 1 - alpha/2] percentiles.
        seed: seed of the local generator (no global random state).
        groups: (n,) cluster label per lesion for a cluster bootstrap.
        threshold: decision threshold for named threshold metrics.

    Returns:
        (low, high); (nan, nan) if no valid replicate was drawn.
    """
    y, p = _as_arrays(y_true, y_prob)
    fn = _metric_fn(metric, threshold)
    rng = np.random.default_rng(seed)
    stats: list[float] = []
    if groups is None:
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        for _ in range(n_boot):
            idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
            stats.append(fn(y[idx], p[idx]))
    else:
        g = np.asarray(groups).ravel()
        if g.size != y.size:
            raise ValueError(f"groups has {g.size} entries for {y.size} samples")
        _, inverse = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]
        draws = 0
        while len(stats) < n_boot and draws < 10 * n_boot:
            draws += 1
            idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
            if y[idx].min() == y[idx].max():
                continue
            value = fn(y[idx], p[idx])
            if np.isfinite(value):
                stats.append(value)
    values = np.asarray(stats, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def roc_points(y_true, y_prob) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points for plotting.

    Returns:
        fpr, tpr, thresholds (scikit-learn's ``roc_curve`` with ``drop_intermediate=False``), starting at
        (0, 0) with threshold +inf.
    """
    y, p = _as_arrays(y_true, y_prob)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    return fpr, tpr, thr


def fold_mean_std(per_fold: Mapping[Any, Mapping[str, float]],
                  names: Sequence[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample std (ddof 1) over folds of each metric, ignoring NaN folds (NaN when too few)."""
    mean, std = {}, {}
    for name in names:
        v = np.array([m[name] for m in per_fold.values()], dtype=np.float64)
        v = v[np.isfinite(v)]
        mean[name] = float(v.mean()) if v.size else float("nan")
        std[name] = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return mean, std


def summarize_folds(
    folds: Mapping[object, tuple[Sequence, Sequence]] | Sequence[tuple[Sequence, Sequence]],
    threshold: float = 0.5,
) -> dict[str, dict]:
    """Per-fold metrics, their mean and standard deviation, and metrics of the pooled predictions.

    Args:
        folds: ``{fold: (y_true, y_prob)}`` or a list of ``(y_true, y_prob)`` (folds numbered from 0).
        threshold: decision threshold.

    Returns:
        ``{"per_fold": {fold: metrics}, "mean": {...}, "std": {...}, "pooled": metrics}`` where mean/std run
        over folds for each name in :data:`METRIC_NAMES` (std with ddof=1, the "± x" of a table; NaN folds are
        ignored, std is NaN with fewer than two finite folds) and pooled concatenates all folds.
    """
    items = folds.items() if isinstance(folds, Mapping) else enumerate(folds)
    per_fold = {}
    ys, ps = [], []
    for fold, (y, p) in items:
        per_fold[fold] = binary_metrics(y, p, threshold)
        ys.append(np.asarray(y).ravel())
        ps.append(np.asarray(p, dtype=np.float64).ravel())
    if not per_fold:
        raise ValueError("no folds given")
    mean, std = fold_mean_std(per_fold, METRIC_NAMES)
    pooled = binary_metrics(np.concatenate(ys), np.concatenate(ps), threshold)
    return {"per_fold": per_fold, "mean": mean, "std": std, "pooled": pooled}
