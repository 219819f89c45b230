import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from nnunet_liver.evaluation.statistics import delong_covariance, delong_test, paired_ttest, wilcoxon


def slow_delong(y, scores):
    """DeLong et al. (1988) from explicit placement values: psi(x, y) = 1, 1/2, 0 for x >, =, < y."""
    y = np.asarray(y)
    pos = [np.asarray(s, float)[y == 1] for s in scores]
    neg = [np.asarray(s, float)[y == 0] for s in scores]
    m, n = len(pos[0]), len(neg[0])
    v10, v01, aucs = [], [], []
    for x, z in zip(pos, neg, strict=True):
        psi = np.array([[1.0 if xi > zj else 0.5 if xi == zj else 0.0 for zj in z] for xi in x])  # (m, n)
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    k = len(scores)
    s10 = np.array([[np.sum((v10[a] - aucs[a]) * (v10[b] - aucs[b])) / (m - 1) for b in range(k)] for a in range(k)])
    s01 = np.array([[np.sum((v01[a] - aucs[a]) * (v01[b] - aucs[b])) / (n - 1) for b in range(k)] for a in range(k)])
    return np.array(aucs), s10 / m + s01 / n


def correlated_scores(n, seed, noise_a=0.6, noise_b=1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    shared = rng.normal(size=n)
    a = y + noise_a * (0.5 * shared + rng.normal(size=n))
    b = y + noise_b * (0.5 * shared + rng.normal(size=n))
    return y, a, b


@pytest.mark.parametrize("seed", range(3))
def test_delong_matches_slow_reference_with_ties(seed):
    y, a, b = correlated_scores(30, seed)
    a, b = np.round(a, 1), np.round(b, 1)  # ties within and across classes
    aucs, cov = delong_covariance(y, a, b)
    ref_aucs, ref_cov = slow_delong(y, [a, b])
    np.testing.assert_allclose(aucs, ref_aucs, rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10, atol=1e-15)
    auc_a, auc_b, z, p = delong_test(y, a, b)
    z_ref = (ref_aucs[0] - ref_aucs[1]) / np.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1])
    assert z == pytest.approx(z_ref, rel=1e-9)
    assert p == pytest.approx(2 * stats.norm.sf(abs(z_ref)), rel=1e-9)


def test_delong_aucs_equal_sklearn():
    y, a, b = correlated_scores(120, seed=5)
    auc_a, auc_b, _, _ = delong_test(y, a, b)
    assert auc_a == pytest.approx(roc_auc_score(y, a))
    assert auc_b == pytest.approx(roc_auc_score(y, b))


def test_delong_identical_predictions():
    y, a, _ = correlated_scores(60, seed=1)
    auc_a, auc_b, z, p = delong_test(y, a, a)
    assert auc_a == auc_b and z == 0.0 and p == 1.0
    # A monotone transform ranks the cases identically: same AUC, no evidence of a difference.
    assert delong_test(y, a, np.exp(a))[2:] == (0.0, 1.0)


def test_delong_detects_clearly_better_predictor():
    y, a, b = correlated_scores(200, seed=0, noise_a=0.5, noise_b=2.5)
    auc_a, auc_b, z, p = delong_test(y, a, b)
    assert auc_a > auc_b + 0.1
    assert z > 0 and p < 0.01
    _, _, z_swapped, p_swapped = delong_test(y, b, a)
    assert z_swapped == pytest.approx(-z) and p_swapped == pytest.approx(p)


def test_delong_similar_predictors_not_significant():
    y, a, b = correlated_scores(200, seed=2, noise_a=1.0, noise_b=1.0)
    assert delong_test(y, a, b)[3] > 0.05


def test_delong_input_validation():
    with pytest.raises(ValueError, match="two cases per class"):
        delong_test([0, 0, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


def test_paired_ttest_matches_scipy_and_drops_nan():
    rng = np.random.default_rng(0)
    a = rng.normal(0.85, 0.03, 20)
    b = a - 0.02 + rng.normal(0, 0.01, 20)
    res = paired_ttest(a, b)
    ref = stats.ttest_rel(a, b)
    assert res.n == 20
    assert res.mean_diff == pytest.approx(np.mean(a - b))
    assert res.statistic == pytest.approx(ref.statistic) and res.p == pytest.approx(ref.pvalue)
    a_nan = a.copy()
    a_nan[3] = np.nan
    res_nan = paired_ttest(a_nan, b)
    keep = np.arange(20) != 3
    assert res_nan.n == 19
    assert res_nan.p == pytest.approx(stats.ttest_rel(a[keep], b[keep]).pvalue)


def test_wilcoxon_matches_scipy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=25)
    b = a + rng.normal(0.3, 0.5, 25)
    res = wilcoxon(a, b)
    ref = stats.wilcoxon(a, b)
    assert res.n == 25 and res.mean_diff == pytest.approx(np.mean(a - b))
    assert res.statistic == pytest.approx(ref.statistic) and res.p == pytest.approx(ref.pvalue)


@pytest.mark.parametrize("test", [paired_ttest, wilcoxon])
def test_identical_samples_give_p_one(test):
    a = np.array([0.8, 0.9, 0.85, 0.7])
    res = test(a, a.copy())
    assert res.p == 1.0 and res.statistic == 0.0 and res.mean_diff == 0.0 and res.n == 4
    with pytest.raises(ValueError):
        test(a, a[:3])
