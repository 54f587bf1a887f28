"""Privacy accounting: epsilon of a history of Gaussian mechanisms, and the noise for a target.

A history is a list of (noise_multiplier, sample_rate, steps), exactly Opacus's accountant
history; Opacus's accountants (``prv``, ``rdp``) compose it, so the CLI
calculator, the trainer, the bundle and an independent recomputation all agree. A release of
sensitivity-normalised sums over the whole data set is the entry (sigma, 1.0, 1).
"""
from __future__ import annotations

from opacus.accountants import create_accountant

from privmed.errors import PrivacyBudgetError

# Opacus's "gdp" is not offered: its CLT approximation understates epsilon (sigma 1, q 0.25, 20 steps,
# delta 1e-5: GDP 6.86 against PRV 8.09), so it cannot state a guarantee
ACCOUNTANTS = ("prv", "rdp")
# a public rule, not a function of the data: a delta from the exact number of images would publish it
DEFAULT_DELTA = 1e-5
History = list[tuple[float, float, int]]


def check_budget(epsilon: float, delta: float, n_train: int) -> None:
    """epsilon > 0 and delta < 1/N (N = training images): otherwise the guarantee is hollow."""
    if not epsilon > 0:
        raise PrivacyBudgetError(f"epsilon must be > 0 (got {epsilon}); use --no-dp for a non-private model")
    if not 0 < delta < 1.0 / n_train:
        raise PrivacyBudgetError(
            f"delta must be in (0, 1/N) = (0, {1.0 / n_train:.3g}) for N={n_train} training images "
            f"(got {delta}); a delta of 1/N or more allows releasing an image outright"
        )


def epsilon_of(history: History, delta: float, accountant: str = "prv") -> float:
    if accountant not in ACCOUNTANTS:
        raise PrivacyBudgetError(f"unknown accountant '{accountant}'; choose one of {', '.join(ACCOUNTANTS)}")
    history = [(float(s), float(q), int(n)) for s, q, n in history if n > 0]
    if not history:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = history
    return float(acc.get_epsilon(delta=delta))


def epsilon_for(sigma: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv") -> float:
    return epsilon_of([(sigma, sample_rate, steps)], delta, accountant)


def sigma_for(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv",
              prefix: History = (), repeat: int = 1) -> float:
    """Smallest noise multiplier (within 0.5 %, from above) such that ``prefix`` followed by
    ``repeat`` copies of (sigma, sample_rate, steps) stays within epsilon."""
    def eps(sigma: float) -> float:
        return epsilon_of(list(prefix) + [(sigma, sample_rate, steps)] * repeat, delta, accountant)

    if eps(1e3) > epsilon:
        raise PrivacyBudgetError(f"epsilon {epsilon} cannot be met with {steps} steps at sample rate "
                                 f"{sample_rate:.4g} (already spent by earlier releases?)")
    lo, hi = 0.0, 1.0
    while eps(hi) > epsilon:
        lo, hi = hi, hi * 2
    while hi - lo > 0.005 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eps(mid) > epsilon else (lo, mid)
    return hi
