"""Paired comparison: p-values equal scipy's and hand values, NaN pairs dropped and counted."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from nnunet_liver.evaluation import compare, lits


def test_known_differences_give_hand_and_scipy_p_values():
    b = np.array([0.80, 0.75, 0.90, 0.60, 0.70])
    a = b + np.array([1, 2, 3, 4, 5]) / 100  # differences 0.01 .. 0.05
    r = compare.paired_tests(a, b)
    assert (r["n"], r["n_dropped_nan"]) == (5, 0)
    assert r["mean_difference"] == pytest.approx(0.03)
    assert r["median_difference"] == pytest.approx(0.03)
    # t = mean(d) / (sd(d) / sqrt(n)) = 0.03 / (0.0158114 / sqrt(5)) = 4.2426; two-sided, 4 df.
    assert r["t_statistic"] == pytest.approx(3 / math.sqrt(2.5 / 5), rel=1e-9)
    assert r["t_pvalue"] == pytest.approx(2 * stats.t.sf(3 / math.sqrt(0.5), 4), rel=1e-9)
    assert r["t_pvalue"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    # Exact Wilcoxon: all five differences positive, one of 2^5 sign patterns per tail.
    assert r["wilcoxon_pvalue"] == pytest.approx(2 / 32)
    assert r["wilcoxon_pvalue"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)


def test_mixed_signs_match_scipy():
    rng = np.random.default_rng(3)
    a = rng.normal(0.8, 0.05, 12)
    b = a - rng.normal(0.01, 0.03, 12)
    r = compare.paired_tests(a, b)
    t, w = stats.ttest_rel(a, b), stats.wilcoxon(a, b)
    assert (r["t_statistic"], r["t_pvalue"]) == pytest.approx((t.statistic, t.pvalue), rel=1e-12)
    assert (r["wilcoxon_statistic"], r["wilcoxon_pvalue"]) == pytest.approx((w.statistic, w.pvalue), rel=1e-12)


def test_nan_pairs_dropped_and_counted():
    a = [1.0, 2.0, math.nan, 4.0, 5.0, 7.0]
    b = [0.5, 1.0, 3.0, math.nan, 4.0, 5.0]
    r = compare.paired_tests(a, b)
    assert (r["n"], r["n_dropped_nan"]) == (4, 2)
    kept_a, kept_b = [1.0, 2.0, 5.0, 7.0], [0.5, 1.0, 4.0, 5.0]
    assert r["t_pvalue"] == pytest.approx(stats.ttest_rel(kept_a, kept_b).pvalue)
    assert r["mean_a"] == pytest.approx(3.75) and r["mean_b"] == pytest.approx(2.625)


def test_identical_results_give_p_one():
    r = compare.paired_tests([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert (r["n"], r["mean_difference"], r["t_pvalue"], r["wilcoxon_pvalue"]) == (3, 0.0, 1.0, 1.0)


def test_too_few_pairs_give_nan():
    r = compare.paired_tests([1.0, math.nan], [0.0, 1.0])
    assert r["n"] == 1 and math.isnan(r["t_pvalue"]) and math.isnan(r["wilcoxon_pvalue"])


def small_case(ref_tumour_hi: int, pred_tumour_hi: int) -> dict:
    shape = (10, 12, 12)
    ref = np.zeros(shape, np.uint8)
    ref[1:9, 1:11, 1:11] = 1
    pred = ref.copy()
    ref[3:6, 3:6, 3:ref_tumour_hi] = 2
    pred[3:6, 3:6, 3:pred_tumour_hi] = 2
    return lits.evaluate_case(ref, pred, (2.0, 1.0, 1.0))


def test_compare_summaries_pairs_by_case_and_reads_json_nulls():
    a = {"prediction_dir": "A", "cases": {"c1": small_case(6, 6), "c2": small_case(6, 5), "c3": small_case(6, 3),
                                          "only_a": small_case(6, 6)}}
    b = {"prediction_dir": "B", "cases": {"c1": small_case(6, 5), "c2": small_case(6, 4), "c3": small_case(6, 3)}}
    # summary.json stores NaN as null: the comparison must read it back.
    b_json = json.loads(json.dumps(b, default=float).replace("NaN", "null"))
    r = compare.compare_summaries(a, b_json, metrics=("tumour_dice", "tumour_hd95", "liver_dice"))
    assert r["n_paired_cases"] == 3 and r["only_in_a"] == ["only_a"] and r["only_in_b"] == []
    da = [a["cases"][c]["tumour"]["dice"] for c in ("c1", "c2", "c3")]
    db = [b["cases"][c]["tumour"]["dice"] for c in ("c1", "c2", "c3")]
    assert r["metrics"]["tumour_dice"]["t_pvalue"] == pytest.approx(stats.ttest_rel(da, db).pvalue)
    assert r["metrics"]["tumour_dice"]["mean_difference"] == pytest.approx(np.mean(np.subtract(da, db)))
    assert r["metrics"]["liver_dice"]["mean_difference"] == 0.0
    md = compare.comparison_markdown(r)
    assert "| tumour_dice | 3 | 0 |" in md and "A - B" in md
