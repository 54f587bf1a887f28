"""Differential privacy: accounting (Opacus accountants), secret randomness, user-level DP-SGD in
Opacus's shape (a unit-level Poisson sampler, a clip-and-noise optimizer, a physical-batch
splitter), Gaussian releases of statistics, and the ledger a bundle states."""
from privmed.privacy.accounting import DEFAULT_DELTA, check_budget, epsilon_for, epsilon_of, sigma_for
from privmed.privacy.engine import DPSGD, DPPlan
from privmed.privacy.optimizer import DPOptimizer
from privmed.privacy.physical import physical_batches
from privmed.privacy.sampler import UnitBatch, UnitPoissonSampler

__all__ = ["DEFAULT_DELTA", "DPOptimizer", "DPPlan", "DPSGD", "UnitBatch", "UnitPoissonSampler", "check_budget",
           "epsilon_for", "epsilon_of", "physical_batches", "sigma_for"]
