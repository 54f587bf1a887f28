"""Differential privacy: accounting (Opacus accountants) and the DP-SGD session."""
from privmed.privacy.accounting import check_budget, default_delta, epsilon_for, sigma_for
from privmed.privacy.engine import DPSession

__all__ = ["DPSession", "check_budget", "default_delta", "epsilon_for", "sigma_for"]
