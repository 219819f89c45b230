"""Paired comparison of two sets of per-case results on the same reference cases.

For every metric: the cases present in both sets with a defined (non-NaN) value on both sides are paired;
the paired t-test (``scipy.stats.ttest_rel``) and the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``,
two-sided, zero differences dropped), through ``nnunet_liver.evaluation.statistics``, are run on the
differences A - B. Cases with NaN on either side are dropped and counted; with fewer than two pairs the
p-values are NaN; when every difference is zero both p-values are 1.
No correction for multiple comparisons is applied: many metrics are correlated, report the one you chose
in advance.
"""
from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np

from nnunet_liver.evaluation.lits import STRUCTURE_METRICS, STRUCTURES, flatten_case

DEFAULT_METRICS = tuple(f"{s}_{m}" for s in STRUCTURES for m in STRUCTURE_METRICS) + ("tumour_burden_abs_error",)


def paired_tests(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Paired t-test and Wilcoxon signed-rank test of A - B, pairs with a NaN dropped.

    The tests are ``nnunet_liver.evaluation.statistics.paired_ttest`` and ``wilcoxon`` (scipy underneath;
    all-zero differences give p = 1).

    Returns:
        n, n_dropped_nan, mean_a, mean_b, mean_difference, median_difference, t_statistic, t_pvalue,
        wilcoxon_statistic, wilcoxon_pvalue.
    """
    from nnunet_liver.evaluation import statistics

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two 1D sequences of equal length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    d = a - b
    out = dict(n=int(a.size), n_dropped_nan=int((~keep).sum()),
               mean_a=float(a.mean()) if a.size else math.nan, mean_b=float(b.mean()) if b.size else math.nan,
               mean_difference=float(d.mean()) if d.size else math.nan,
               median_difference=float(np.median(d)) if d.size else math.nan,
               t_statistic=math.nan, t_pvalue=math.nan, wilcoxon_statistic=math.nan, wilcoxon_pvalue=math.nan)
    if a.size < 2:
        return out
    with warnings.catch_warnings():
        # Ties and zeros switch Wilcoxon to its normal approximation, with a warning per metric; the
        # returned p-value is the answer.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        t = statistics.paired_ttest(a, b)
        w = statistics.wilcoxon(a, b)
    out.update(t_statistic=t.statistic, t_pvalue=t.p, wilcoxon_statistic=w.statistic, wilcoxon_pvalue=w.p)
    return out


def compare_cases(
    cases_a: Mapping[str, Mapping[str, float]],
    cases_b: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict:
    """Paired tests per metric over the cases both sets hold.

    Args:
        cases_a, cases_b: case name -> flat metric row (``lits.flatten_case``).
        metrics: row keys to compare.

    Returns:
        {"n_paired_cases", "only_in_a", "only_in_b", "metrics": {metric: see ``paired_tests``}}.
    """
    common = [c for c in cases_a if c in cases_b]
    result = dict(
        n_paired_cases=len(common),
        only_in_a=[c for c in cases_a if c not in cases_b],
        only_in_b=[c for c in cases_b if c not in cases_a],
        metrics={},
    )
    for m in metrics:
        missing = [c for c in common if m not in cases_a[c] or m not in cases_b[c]]
        if missing:
            raise KeyError(f"metric {m!r} missing for case {missing[0]!r}")
        a = [_as_float(cases_a[c][m]) for c in common]
        b = [_as_float(cases_b[c][m]) for c in common]
        result["metrics"][m] = paired_tests(a, b)
    return result


def _as_float(value) -> float:
    return math.nan if value is None else float(value)


def compare_summaries(summary_a: Mapping, summary_b: Mapping, metrics: Sequence[str] = DEFAULT_METRICS) -> dict:
    """``compare_cases`` on two ``evaluate_folders`` results (or their summary.json, NaN stored as null)."""
    rows_a = {c: flatten_case(v) for c, v in summary_a["cases"].items()}
    rows_b = {c: flatten_case(v) for c, v in summary_b["cases"].items()}
    result = compare_cases(rows_a, rows_b, metrics)
    result["a"] = summary_a.get("prediction_dir")
    result["b"] = summary_b.get("prediction_dir")
    return result


def comparison_markdown(result: Mapping) -> str:
    """A markdown table of ``compare_cases`` / ``compare_summaries`` output."""
    lines = ["# Paired comparison", ""]
    if result.get("a") or result.get("b"):
        lines += [f"A: `{result.get('a')}`  ", f"B: `{result.get('b')}`", ""]
    lines += [f"Paired cases: {result['n_paired_cases']} (only in A: {len(result['only_in_a'])}, "
              f"only in B: {len(result['only_in_b'])}). Differences are A - B.", "",
              "| metric | n | NaN dropped | mean A | mean B | mean A - B | median A - B | t-test p | Wilcoxon p |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, r in result["metrics"].items():
        lines.append(f"| {m} | {r['n']} | {r['n_dropped_nan']} | {_fmt(r['mean_a'])} | {_fmt(r['mean_b'])} | "
                     f"{_fmt(r['mean_difference'])} | {_fmt(r['median_difference'])} | {_fmt_p(r['t_pvalue'])} | "
                     f"{_fmt_p(r['wilcoxon_pvalue'])} |")
    return "\n".join(lines) + "\n"


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _fmt_p(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"
