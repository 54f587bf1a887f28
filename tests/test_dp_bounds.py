"""Theoretical ceiling against closed forms; empirical bounds never claim more than the data support."""
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from privmed.evaluation import dp_bounds as B


def closed_form_auc(eps, delta):
    """Integral of min(1, e^eps a + d, 1 - e^-eps (1 - d - a)) by hand (three linear pieces)."""
    ee = math.exp(eps)
    a1 = (1 - delta) / (1 + ee)          # where the two lines cross
    first = ee * a1 ** 2 / 2 + delta * a1
    w = 1 - delta - a1                   # second line runs from a1 to 1 - delta
    second = w - w ** 2 / (2 * ee)
    return first + second + delta        # TPR = 1 on (1 - delta, 1]


def test_eps_zero_gives_chance():
    assert B.ceiling_auc(0.0, 0.0) == pytest.approx(0.5, abs=1e-12)
    a = np.linspace(0, 1, 101)
    np.testing.assert_allclose(B.ceiling_tpr(a, 0.0, 0.0), a, atol=1e-12)


@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0, 2.0, 5.0, 8.0])
def test_pure_dp_auc_is_sigmoid(eps):
    assert B.ceiling_auc(eps, 0.0) == pytest.approx(math.exp(eps) / (1 + math.exp(eps)), abs=1e-12)


@pytest.mark.parametrize("eps,delta", [(0.0, 1e-3), (1.0, 1e-5), (2.0, 1e-2), (5.0, 0.1)])
def test_approx_dp_auc_closed_form(eps, delta):
    assert B.ceiling_auc(eps, delta) == pytest.approx(closed_form_auc(eps, delta), abs=1e-12)


@pytest.mark.parametrize("eps", [0.5, 1.0, 3.0])
def test_randomized_response_lies_on_the_ceiling(eps):
    # randomized response is eps-DP and its likelihood-ratio test is exactly tight
    tpr, fpr = math.exp(eps) / (1 + math.exp(eps)), 1 / (1 + math.exp(eps))
    assert B.ceiling_tpr(fpr, eps, 0.0) == pytest.approx(tpr, abs=1e-12)
    assert B.eps_from_rates(tpr, fpr) == pytest.approx(eps, abs=1e-12)


def test_ceiling_satisfies_both_inequalities_and_is_monotone():
    a = np.linspace(0, 1, 1001)
    for eps, d in [(0.5, 0.0), (2.0, 1e-5), (4.0, 0.05)]:
        t = B.ceiling_tpr(a, eps, d)
        assert np.all(t <= math.exp(eps) * a + d + 1e-12)
        assert np.all(1 - a <= math.exp(eps) * (1 - t) + d + 1e-12)
        assert np.all(np.diff(t) >= -1e-12)


def test_privacy_profile_is_at_least_as_tight_as_each_point():
    prof_eps, prof_delta = [1.0, 2.0], [1e-2, 1e-5]
    a = np.logspace(-4, 0, 200)
    both = B.ceiling_tpr(a, prof_eps, prof_delta)
    for e, d in zip(prof_eps, prof_delta):
        assert np.all(both <= B.ceiling_tpr(a, e, d) + 1e-12)
    assert B.ceiling_auc(prof_eps, prof_delta) <= min(B.ceiling_auc(1.0, 1e-2), B.ceiling_auc(2.0, 1e-5)) + 1e-9


def test_no_dp_has_no_ceiling():
    s = B.ceiling_summary(None, None)
    assert s["auc"] == 1.0 and s["tpr_at_fpr"]["0.01"] == 1.0


@pytest.mark.parametrize("k,n", [(0, 50), (3, 50), (25, 50), (50, 50), (7, 1000)])
def test_clopper_pearson_matches_scipy_exact(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.90, method="exact")  # two-sided 90% = one-sided 95%
    assert B.cp_lower(k, n, 0.05) == pytest.approx(ci.low, abs=1e-9)
    assert B.cp_upper(k, n, 0.05) == pytest.approx(ci.high, abs=1e-9)


def test_perfect_separation_is_limited_by_clopper_pearson():
    n = 400
    lb = B.eps_lower_bound(np.ones(n), np.zeros(n), delta=0.0, confidence=0.95)
    half = n - n // 2
    # what a perfect attack can certify on the held-out half, TPR and FPR each at alpha/2
    expected = math.log(B.cp_lower(half, half, 0.025) / B.cp_upper(0, half, 0.025))
    assert lb.eps_lb == pytest.approx(expected, rel=1e-9)
    assert lb.eps_lb <= B.max_certifiable_eps(n, n) + 1e-12
    assert math.isfinite(lb.eps_lb) and lb.eps_point == math.inf
    # more data certify more, and never infinitely much
    assert B.max_certifiable_eps(10 * n, 10 * n) > B.max_certifiable_eps(n, n)


def test_identical_distributions_give_no_bound_at_the_stated_rate():
    # the bound is a 95% statement: with no leak it may be > 0 in at most ~5% of trials
    rng = np.random.default_rng(0)
    trials = 100
    positive = sum(B.eps_lower_bound(rng.normal(size=60), rng.normal(size=60), seed=i, max_thresholds=40).eps_lb > 0
                   for i in range(trials))
    assert positive <= 12  # Binomial(100, 0.05): P(X > 12) < 0.002


def test_bound_is_valid_on_a_known_eps_dp_mechanism():
    # randomized response with eps=1: members answer 1 w.p. e/(1+e), non-members w.p. 1/(1+e)
    eps, n = 1.0, 3000
    p1 = math.exp(eps) / (1 + math.exp(eps))
    over, found = 0, 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        lb = B.eps_lower_bound(rng.random(n) < p1, rng.random(n) < 1 - p1, seed=seed)
        over += lb.eps_lb > eps
        found += lb.eps_lb > 0.5
    assert over <= 3            # valid: exceeds the true eps rarely (expected <= 1 in 20)
    assert found >= 15          # and informative: a real leak is seen


def test_fixed_thresholds_use_all_data_with_bonferroni():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(2, 1, 500), rng.normal(0, 1, 500)
    one = B.eps_lower_bound(pos, neg, thresholds=[1.0])
    many = B.eps_lower_bound(pos, neg, thresholds=np.linspace(-1, 3, 40))
    assert one.eps_lb > 0 and one.n_pos == 500
    c = B.certified_eps(int((pos >= 1).sum()), 500, int((neg >= 1).sum()), 500, 0.0, 0.05 / 2)
    assert one.eps_lb == pytest.approx(c["eps_lb"])
    assert "Bonferroni" in many.method


def test_delta_reduces_the_bound():
    pos, neg = np.r_[np.ones(90), np.zeros(10)], np.r_[np.ones(10), np.zeros(90)]
    assert B.eps_lower_bound(pos, neg, delta=0.05, thresholds=[1]).eps_lb < \
        B.eps_lower_bound(pos, neg, delta=0.0, thresholds=[1]).eps_lb


def test_auc_interval_covers_and_shrinks():
    lo1, hi1 = B.auc_confidence_interval(0.7, 50, 50)
    lo2, hi2 = B.auc_confidence_interval(0.7, 5000, 5000)
    assert lo1 < lo2 < 0.7 < hi2 < hi1


def test_one_run_p_value_pays_delta_per_canary():
    """Steinke, Nasr & Jagielski (2023): P[V >= v] <= f(v) + 2 m delta max_i (f(v - i) - f(v)) / i.
    Failed before: there was no one-run bound with delta (the audit used the pure-DP form for any delta)."""
    from scipy.stats import binom

    m, r, v, eps, delta = 1000, 100, 70, 0.5, 1e-5
    q = math.exp(eps) / (1 + math.exp(eps))

    def f(k):
        return binom.sf(k - 1, r, q)

    brute = f(v) + 2 * m * delta * max((f(v - i) - f(v)) / i for i in range(1, v + 1))
    assert B.one_run_p_value(v, r, m, eps, delta) == pytest.approx(brute, rel=1e-9)
    assert B.one_run_p_value(v, r, m, eps, 0.0) == pytest.approx(f(v), rel=1e-9)
    pure = B.one_run_eps_lower_bound(95, 100, 1000, 0.0)
    assert 0 < B.one_run_eps_lower_bound(95, 100, 1000, 1e-5) < pure  # delta costs some eps
    assert B.one_run_eps_lower_bound(95, 100, 1000, 0.05) == 0.0     # 2 m delta = 100: nothing is shown
    with pytest.raises(ValueError):
        B.one_run_p_value(10, 20, 0, 1.0, 1e-5)  # delta without the number of canaries


def test_one_run_test_is_valid_on_randomized_response():
    """eps-DP randomized response on coin-flipped canaries is the worst case of the theorem: the test
    of "eps-DP" at 5 % may reject it in at most ~5 % of runs."""
    eps, m = 1.0, 200
    q = math.exp(eps) / (1 + math.exp(eps))
    rng = np.random.default_rng(0)
    rejected = sum(B.one_run_p_value(int(rng.binomial(m, q)), m, m, eps) <= 0.05 for _ in range(400))
    assert rejected <= 32  # Binomial(400, 0.05): mean 20, P(X > 32) < 0.005
    assert B.one_run_eps_lower_bound(int(m * q), m, m) < eps  # the typical run shows less than the truth
