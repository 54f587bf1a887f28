"""Privacy accounting: epsilon from (sigma, q, steps, delta), and sigma for a target epsilon.

Thin over Opacus's accountants (registry: ``rdp``, ``prv``, ``gdp``) so that the CLI calculator,
the trainer and the bundle all agree on the same numbers.
"""
from __future__ import annotations

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from privmed.errors import PrivacyBudgetError

ACCOUNTANTS = ("prv", "rdp", "gdp")


def check_budget(epsilon: float, delta: float, n_train: int) -> None:
    """epsilon > 0 and delta < 1/N (N = training images): otherwise the guarantee is hollow."""
    if not epsilon > 0:
        raise PrivacyBudgetError(f"epsilon must be > 0 (got {epsilon}); use --no-dp for a non-private model")
    if not 0 < delta < 1.0 / n_train:
        raise PrivacyBudgetError(
            f"delta must be in (0, 1/N) = (0, {1.0 / n_train:.3g}) for N={n_train} training images "
            f"(got {delta}); a delta of 1/N or more allows releasing an image outright"
        )


def default_delta(n_train: int) -> float:
    """One tenth of 1/N, rounded down to one significant figure."""
    d = 0.1 / n_train
    scale = 10 ** len(str(int(1 / d)))
    return int(d * scale) / scale if int(d * scale) else d


def epsilon_for(sigma: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv") -> float:
    if accountant not in ACCOUNTANTS:
        raise PrivacyBudgetError(f"unknown accountant '{accountant}'; choose one of {', '.join(ACCOUNTANTS)}")
    if steps == 0:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = [(sigma, sample_rate, steps)]
    return float(acc.get_epsilon(delta=delta))


def sigma_for(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv") -> float:
    """Smallest noise multiplier (to Opacus's tolerance, from above) with epsilon(steps) <= target."""
    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant=accountant, epsilon_tolerance=0.005))
