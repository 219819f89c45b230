"""Paired significance tests for model comparisons (paper.md 3.3: paired t-tests, p < 0.05) and DeLong's test.

The paper compares models with paired t-tests on the hold-out set. For two classifiers scored on the same
lesions, DeLong's test compares their correlated ROC AUCs directly; it is implemented here with the fast
midrank algorithm of Sun & Xu (IEEE Signal Processing Letters 21(11), 2014). numpy/scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.stats import rankdata

__all__ = ["PairedTestResult", "paired_ttest", "wilcoxon", "delong_test", "delong_covariance"]


@dataclass(frozen=True)
class PairedTestResult:
    """Result of a paired test.

    Attributes:
        n: number of pairs used (pairs with a NaN on either side are dropped).
        mean_diff: mean of ``a - b``.
        statistic: the test statistic (t, or Wilcoxon's W).
        p: two-sided p-value.
    """

    n: int
    mean_diff: float
    statistic: float
    p: float


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def paired_ttest(a, b) -> PairedTestResult:
    """Two-sided paired t-test (``scipy.stats.ttest_rel``) of per-case values ``a`` vs ``b``.

    Identical samples (all differences zero) give statistic 0 and p = 1 rather than scipy's NaN; fewer than
    two pairs give NaN statistic and p.
    """
    a, b = _paired(a, b)
    d = a - b
    mean_diff = float(d.mean()) if d.size else float("nan")
    if d.size < 2:
        return PairedTestResult(d.size, mean_diff, float("nan"), float("nan"))
    if np.all(d == 0):
        return PairedTestResult(d.size, 0.0, 0.0, 1.0)
    res = stats.ttest_rel(a, b)
    return PairedTestResult(d.size, mean_diff, float(res.statistic), float(res.pvalue))


def wilcoxon(a, b) -> PairedTestResult:
    """Two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences dropped).

    All-zero differences give statistic 0 and p = 1; no pairs give NaN.
    """
    a, b = _paired(a, b)
    d = a - b
    if d.size == 0:
        return PairedTestResult(0, float("nan"), float("nan"), float("nan"))
    if np.all(d == 0):
        return PairedTestResult(d.size, 0.0, 0.0, 1.0)
    res = stats.wilcoxon(a, b)
    return PairedTestResult(d.size, float(d.mean()), float(res.statistic), float(res.pvalue))


def delong_covariance(y_true, *scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of several scores on the same cases and the DeLong covariance of those AUCs.

    Fast version (Sun & Xu 2014): with midranks ``T_z`` of all cases, ``T_x`` within positives and ``T_y``
    within negatives, the structural components are ``V10 = (T_z[pos] - T_x) / n`` and
    ``V01 = 1 - (T_z[neg] - T_y) / m`` (m positives, n negatives); AUC is the mean of ``V10`` and
    ``S = cov(V10) / m + cov(V01) / n``.

    Args:
        y_true: (N,) labels in {0, 1}, both present.
        *scores: one or more (N,) score arrays.

    Returns:
        aucs (k,) and covariance (k, k).
    """
    y = np.asarray(y_true).ravel()
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be 0/1")
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least two cases per class, got {m} positives and {n} negatives")
    s = np.vstack([np.asarray(sc, dtype=np.float64).ravel() for sc in scores])
    if s.shape[1] != y.size:
        raise ValueError("scores and y_true differ in length")
    tz = rankdata(s, axis=1)
    tx = rankdata(s[:, pos], axis=1)
    ty = rankdata(s[:, neg], axis=1)
    v10 = (tz[:, pos] - tx) / n
    v01 = 1.0 - (tz[:, neg] - ty) / m
    aucs = v10.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_test(y_true, prob_a, prob_b) -> tuple[float, float, float, float]:
    """DeLong's test for the difference of two correlated ROC AUCs (same cases, two scores).

    Args:
        y_true: (N,) labels in {0, 1}, at least two per class.
        prob_a: (N,) scores of model A.
        prob_b: (N,) scores of model B.

    Returns:
        (auc_a, auc_b, z, p) with ``z = (auc_a - auc_b) / sd`` and two-sided normal p. When the difference has
        zero variance (e.g. identical rankings) z = 0 and p = 1 if the AUCs are equal.
    """
    aucs, cov = delong_covariance(y_true, prob_a, prob_b)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    # Rounding can leave a tiny non-zero variance (or difference) for identical inputs.
    if var <= 1e-15:
        if abs(diff) <= 1e-12:
            return float(aucs[0]), float(aucs[1]), 0.0, 1.0
        return float(aucs[0]), float(aucs[1]), float(np.copysign(np.inf, diff)), 0.0
    z = diff / np.sqrt(var)
    return float(aucs[0]), float(aucs[1]), float(z), float(2 * stats.norm.sf(abs(z)))
