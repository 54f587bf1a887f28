"""Differential privacy: accounting (Opacus accountants), secret randomness, user-level DP-SGD,
Gaussian releases of statistics, and the ledger a bundle states."""
from privmed.privacy.accounting import DEFAULT_DELTA, check_budget, epsilon_for, epsilon_of, sigma_for
from privmed.privacy.engine import DPPlan, DPSGD

__all__ = ["DEFAULT_DELTA", "DPPlan", "DPSGD", "check_budget", "epsilon_for", "epsilon_of", "sigma_for"]
