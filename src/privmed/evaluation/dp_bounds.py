"""What (epsilon, delta)-DP allows a membership attacker, and what an attack shows.

Theoretical ceiling. For an (eps, delta)-DP mechanism every membership test with false-positive
rate FPR and true-positive rate TPR satisfies (Kairouz et al. 2015, hypothesis-testing view)

    TPR     <= e^eps * FPR + delta
    1 - FPR <= e^eps * (1 - TPR) + delta

so TPR(FPR) <= min(1, e^eps FPR + delta, 1 - e^-eps (1 - delta - FPR)). Integrating that curve
gives the largest possible ROC AUC (for delta = 0 it is e^eps / (1 + e^eps)). A whole privacy
profile (several (eps_i, delta_i) pairs of the same mechanism, all true at once) gives the
pointwise minimum of the curves: a tighter ceiling that is just as valid.

Empirical lower bound. An attack that achieves (TPR, FPR) at some threshold proves
eps >= log((TPR - delta) / FPR) and eps >= log((1 - FPR - delta) / (1 - TPR)). With finite samples
the rates are replaced by one-sided Clopper-Pearson bounds (TPR from below, FPR from above), so
the bound only claims what the data support at the stated confidence. Choosing the best
threshold on the same data that then certify it would overstate the bound; ``eps_lower_bound``
therefore picks the threshold on one half of the scores and certifies it on the other half, or
takes caller-fixed thresholds with a Bonferroni correction.

That bound is only as valid as its binomial model: each score must be an independent trial of
the DP mechanism (separate training runs, or targets whose membership was decided by independent
coin flips before training). Many targets of *one* trained model whose membership was not so
decided (a bundle's training images against its validation images) are not independent trials:
over them the number is a heuristic, not a certified bound, and the audit only warns on it.

One-run audit. Steinke, Nasr & Jagielski (2023, "Privacy auditing with one (1) training run")
prove what one training run does certify: m canaries, each included by an independent fair coin
before training, an attacker that makes r guesses (abstaining on the rest). Under (eps, delta)-DP
the number of correct guesses v satisfies P[V >= v] <= f(v) + 2 m delta max_i (f(v - i) - f(v)) / i,
f(v) = P[Binomial(r, e^eps / (1 + e^eps)) >= v] (``one_run_p_value``): delta is paid once per canary.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import beta as _beta

# --------------------------------------------------------------------------- ceiling

def _profile(epsilon, delta) -> list[tuple[float, float]]:
    eps = np.atleast_1d(np.asarray(epsilon, dtype=float))
    dl = np.atleast_1d(np.asarray(delta, dtype=float))
    eps, dl = np.broadcast_arrays(eps, dl)
    for e, d in zip(eps, dl):
        if not (e >= 0 and 0 <= d <= 1):
            raise ValueError(f"need eps >= 0 and 0 <= delta <= 1 (got eps={e}, delta={d})")
    return list(zip(eps.tolist(), dl.tolist()))


def ceiling_tpr(fpr, epsilon, delta=0.0) -> np.ndarray:
    """Largest TPR any attack can have at false-positive rate ``fpr`` against an (eps, delta)-DP
    mechanism. ``epsilon``/``delta`` may be arrays (a privacy profile): the minimum is taken."""
    a = np.clip(np.asarray(fpr, dtype=float), 0.0, 1.0)
    out = np.ones_like(a)
    for e, d in _profile(epsilon, delta):
        if math.isinf(e):
            continue
        ee = math.exp(e)
        out = np.minimum(out, ee * a + d)
        out = np.minimum(out, 1.0 - np.maximum(0.0, 1.0 - d - a) / ee)
    return out


def ceiling_auc(epsilon, delta=0.0) -> float:
    """Largest ROC AUC allowed by (eps, delta)-DP (exact: the ceiling is piecewise linear and is
    integrated with the trapezoid rule over all its breakpoints)."""
    pts = {0.0, 1.0}
    for e, d in _profile(epsilon, delta):
        if math.isinf(e):
            return 1.0
        ee = math.exp(e)
        for p in ((1 - d) / (1 + ee), (1 - d) / ee, 1 - d):  # line crossing, where a line reaches 1, kink
            if 0 < p < 1:
                pts.add(p)
    prof = _profile(epsilon, delta)
    if len(prof) > 1:  # crossings between curves of different profile points: fine grid (error < 1e-8)
        fine = np.linspace(0, 1, 20001)
        pts.update(fine.tolist())
    x = np.array(sorted(pts))
    y = ceiling_tpr(x, epsilon, delta)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def ceiling_summary(epsilon: float | None, delta: float | None, fprs=(0.001, 0.01)) -> dict:
    """Ceiling AUC and TPR at the given FPRs, for the audit report. None epsilon = no DP = no ceiling."""
    if epsilon is None:
        return {"epsilon": None, "delta": None, "auc": 1.0, "tpr_at_fpr": {str(f): 1.0 for f in fprs},
                "note": "non-private model: no theoretical ceiling"}
    d = float(delta or 0.0)
    return {"epsilon": float(epsilon), "delta": d, "auc": ceiling_auc(epsilon, d),
            "tpr_at_fpr": {str(f): float(ceiling_tpr(f, epsilon, d)) for f in fprs}}


# --------------------------------------------------------------------------- Clopper-Pearson

def cp_lower(k: int, n: int, alpha: float = 0.05) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound of a binomial proportion."""
    if n <= 0 or k <= 0:
        return 0.0
    return float(_beta.ppf(alpha, k, n - k + 1))


def cp_upper(k: int, n: int, alpha: float = 0.05) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound of a binomial proportion."""
    if n <= 0 or k >= n:
        return 1.0
    return float(_beta.ppf(1 - alpha, k + 1, n - k))


def eps_from_rates(tpr: float, fpr: float, delta: float = 0.0) -> float:
    """max of the two (eps, delta) inequalities solved for eps at one operating point; >= 0."""
    best = 0.0
    if fpr > 0 and tpr - delta > 0:
        best = max(best, math.log((tpr - delta) / fpr))
    elif fpr == 0 and tpr - delta > 0:
        return math.inf
    tnr, fnr = 1 - fpr, 1 - tpr
    if fnr > 0 and tnr - delta > 0:
        best = max(best, math.log((tnr - delta) / fnr))
    elif fnr == 0 and tnr - delta > 0:
        return math.inf
    return best


def certified_eps(tp: int, n_pos: int, fp: int, n_neg: int, delta: float = 0.0, alpha: float = 0.05) -> dict:
    """Lower bound on eps from one threshold's counts, valid with probability >= 1 - alpha when
    the counts are binomial (independent trials; see the module docstring).

    TPR is bounded from below and FPR from above (each at alpha/2, union bound), then both DP
    inequalities are solved for eps."""
    a = alpha / 2
    tpr_lo, fpr_hi = cp_lower(tp, n_pos, a), cp_upper(fp, n_neg, a)
    # symmetric form uses TNR from below (= 1 - FPR_hi) and FNR from above (= 1 - TPR_lo)
    eps = eps_from_rates(tpr_lo, fpr_hi, delta)
    return {"eps_lb": eps, "tpr": tp / n_pos, "fpr": fp / n_neg, "tpr_lo": tpr_lo, "fpr_hi": fpr_hi,
            "n_pos": n_pos, "n_neg": n_neg}


# --------------------------------------------------------------------------- empirical bound

@dataclass
class EpsLowerBound:
    eps_lb: float          # at `confidence` if the scores are independent trials (0 when nothing is shown)
    eps_point: float       # plug-in estimate at the certified threshold (no CI; can be inf)
    confidence: float
    threshold: float | None
    direction: str         # "member if score >= t" or the reverse (the symmetric inequality)
    tpr: float
    fpr: float
    tpr_lo: float
    fpr_hi: float
    n_pos: int
    n_neg: int
    method: str

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and math.isinf(v):
                d[k] = "inf"
        return d


def _counts(pos: np.ndarray, neg: np.ndarray, t: float) -> tuple[int, int]:
    return int((pos >= t).sum()), int((neg >= t).sum())


def _candidates(pos: np.ndarray, neg: np.ndarray, max_thresholds: int) -> np.ndarray:
    s = np.unique(np.concatenate([pos, neg]))
    if len(s) > max_thresholds:
        s = np.unique(np.quantile(s, np.linspace(0, 1, max_thresholds)))
    return s


def eps_lower_bound(member_scores, nonmember_scores, delta: float = 0.0, confidence: float = 0.95,
                    thresholds=None, seed: int = 0, max_thresholds: int = 200) -> EpsLowerBound:
    """Empirical epsilon lower bound of a membership attack, valid at ``confidence`` when the scores
    are independent trials (else a heuristic: see the module docstring).

    Higher score = "member". Without ``thresholds`` the scores are split in two random halves:
    the threshold (and direction) with the best bound on the first half is certified with
    Clopper-Pearson on the second, untouched half. With caller-fixed ``thresholds`` all data are
    used and the confidence is Bonferroni-split over thresholds and both directions.
    """
    pos = np.asarray(member_scores, dtype=float)
    neg = np.asarray(nonmember_scores, dtype=float)
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError("need at least 2 member and 2 non-member scores")
    alpha = 1 - confidence

    def best_over(ts, p, q, a):
        best = None
        for t in ts:
            tp, fp = _counts(p, q, t)
            for direction, (k1, k0) in (("member if score >= t", (tp, fp)),
                                        ("member if score < t", (len(p) - tp, len(q) - fp))):
                c = certified_eps(k1, len(p), k0, len(q), delta, a)
                if best is None or c["eps_lb"] > best[0]["eps_lb"]:
                    best = (c, float(t), direction)
        return best

    if thresholds is not None:
        ts = np.atleast_1d(np.asarray(thresholds, dtype=float))
        c, t, direction = best_over(ts, pos, neg, alpha / (2 * len(ts)))
        method = f"fixed thresholds ({len(ts)}), Bonferroni over thresholds and directions"
    else:
        rng = np.random.default_rng(seed)
        pp, qq = rng.permutation(pos), rng.permutation(neg)
        p1, p2 = pp[: len(pp) // 2], pp[len(pp) // 2:]
        q1, q2 = qq[: len(qq) // 2], qq[len(qq) // 2:]
        _, t, direction = best_over(_candidates(p1, q1, max_thresholds), p1, q1, alpha)
        tp, fp = _counts(p2, q2, t)
        if direction != "member if score >= t":
            tp, fp = len(p2) - tp, len(q2) - fp
        c = certified_eps(tp, len(p2), fp, len(q2), delta, alpha)
        method = "threshold chosen on a random half, Clopper-Pearson on the other half"
    point = eps_from_rates(c["tpr"], c["fpr"], delta)
    return EpsLowerBound(eps_lb=c["eps_lb"], eps_point=point, confidence=confidence, threshold=t,
                         direction=direction, tpr=c["tpr"], fpr=c["fpr"], tpr_lo=c["tpr_lo"],
                         fpr_hi=c["fpr_hi"], n_pos=c["n_pos"], n_neg=c["n_neg"], method=method)


def max_certifiable_eps(n_pos: int, n_neg: int, delta: float = 0.0, confidence: float = 0.95) -> float:
    """The largest bound ``certified_eps`` can give on these sample sizes (perfect separation)."""
    return certified_eps(n_pos, n_pos, 0, n_neg, delta, 1 - confidence)["eps_lb"]


# --------------------------------------------------------------------------- one-run audit

def one_run_p_value(correct: int, guesses: int, canaries: int, eps: float, delta: float = 0.0) -> float:
    """P[at least ``correct`` of ``guesses`` right] for an (eps, delta)-DP training run audited with
    ``canaries`` coin-flipped canaries (Steinke, Nasr & Jagielski 2023; module docstring). A small
    value rejects "the recipe is (eps, delta)-DP"."""
    from scipy.stats import binom

    v, r = int(correct), int(guesses)
    if not 0 <= v <= r:
        raise ValueError(f"need 0 <= correct <= guesses (got {v}, {r})")
    if delta > 0 and canaries < r:
        raise ValueError("delta > 0 needs the number of canaries (at least the number of guesses)")
    if v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-eps))  # accuracy of eps-DP randomized response
    tail = float(binom.sf(v - 1, r, q))
    # max over i of P[v - i <= Binomial < v] / i: what delta can buy, per unit of delta and canary
    below = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q)) / np.arange(1, v + 1)
    return min(1.0, tail + 2 * canaries * delta * float(below.max()))


def one_run_eps_lower_bound(correct: int, guesses: int, canaries: int = 0, delta: float = 0.0,
                            confidence: float = 0.95) -> float:
    """The largest eps that ``one_run_p_value`` rejects at ``confidence`` (0 if none): a certified
    lower bound on the recipe's epsilon at that delta."""
    level = 1 - confidence
    if guesses == 0 or one_run_p_value(correct, guesses, canaries, 0.0, delta) > level:
        return 0.0
    lo, hi = 0.0, 50.0
    for _ in range(60):  # the p-value rises with eps: bisect for p-value = 1 - confidence
        mid = (lo + hi) / 2
        if one_run_p_value(correct, guesses, canaries, mid, delta) <= level:
            lo = mid
        else:
            hi = mid
    return lo


def auc_confidence_interval(auc: float, n_pos: int, n_neg: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided normal interval with the Hanley & McNeil (1982) standard error."""
    from scipy.stats import norm

    a = min(max(auc, 1e-9), 1 - 1e-9)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    z = norm.ppf(1 - (1 - confidence) / 2)
    se = math.sqrt(max(var, 0.0))
    return max(0.0, auc - z * se), min(1.0, auc + z * se)
