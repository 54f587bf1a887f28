"""Gaussian releases of statistics of private images (counts, sums, histograms).

Each unit contributes one row whose L2 norm is at most ``sensitivity``; the release is the sum of
the rows plus N(0, (sigma * sensitivity)^2) per coordinate from the secret stream. In an
accountant's history it is the entry (sigma, 1.0, 1).
"""
from __future__ import annotations

import numpy as np

from privmed.privacy.accounting import History, check_budget, sigma_for
from privmed.privacy.randomness import SecretStream

# Gaussian releases on the validation units: (1) class counts + margin histogram, (2) OOD score
# histogram (privacy.validation.validation_releases); their noise is planned before training, with the budget
RELEASES_ON_VALIDATION = 2


def validation_history(epsilon: float, delta: float, accountant: str) -> History:
    """The validation side's planned releases: each (sigma, 1, 1), sigma such that all compose to epsilon."""
    sigma = sigma_for(epsilon, delta, 1.0, 1, accountant, repeat=RELEASES_ON_VALIDATION)
    return [(sigma, 1.0, 1)] * RELEASES_ON_VALIDATION


def gaussian_sum(rows: np.ndarray, sensitivity: float, sigma: float, stream: SecretStream | None = None) -> np.ndarray:
    rows = np.asarray(rows, np.float64)
    norms = np.linalg.norm(rows.reshape(len(rows), -1), axis=1) if len(rows) else np.zeros(0)
    if len(rows) and norms.max() > sensitivity * (1 + 1e-6):
        raise ValueError(f"a row has norm {norms.max():.4g} > sensitivity {sensitivity}: clip before releasing")
    total = rows.sum(0) if len(rows) else np.zeros(rows.shape[1:])
    return total + (stream or SecretStream()).normal(tuple(total.shape), sigma * sensitivity)


def unit_class_rows(labels: np.ndarray, units: np.ndarray, num_classes: int) -> np.ndarray:
    """One row per unit: its images' class counts scaled to L2 norm 1 (a unit with images of one
    class contributes one count to that class)."""
    n_units = int(units.max()) + 1 if len(units) else 0
    counts = np.zeros((n_units, num_classes))
    np.add.at(counts, (units, labels), 1.0)
    return counts / np.maximum(np.linalg.norm(counts, axis=1, keepdims=True), 1e-12)


def dp_class_weights(labels: np.ndarray, units: np.ndarray, num_classes: int, sigma: float,
                     stream: SecretStream | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(noisy per-class unit counts, weights in (0, 1]): inverse noisy frequency, largest = 1."""
    noisy = gaussian_sum(unit_class_rows(labels, units, num_classes), 1.0, sigma, stream)
    return noisy, weights_from_counts(noisy)


def class_counts_release(labels: np.ndarray, units: np.ndarray, num_classes: int, sigma: float, epsilon: float,
                         delta: float, stream: SecretStream, saved=None) -> tuple[np.ndarray, np.ndarray, float]:
    """The first release of every DP-SGD run (``privmed train`` and each federated hospital): (noisy class
    counts, class weights, DP number of units). A delta of 1/N or more is refused before anything is drawn
    (the exact N decides only that). ``saved``: the counts of a resumed run, a DP output reused, never redrawn."""
    check_budget(epsilon, delta, max(int(units.max()) + 1, len(labels)))
    counts = np.asarray(saved) if saved is not None else dp_class_weights(labels, units, num_classes, sigma,
                                                                          stream)[0]
    return counts, weights_from_counts(counts), units_estimate(counts)


def weights_from_counts(noisy: np.ndarray) -> np.ndarray:
    """Inverse noisy frequency, largest = 1 (post-processing of DP counts; federated: their sum)."""
    noisy = np.asarray(noisy, np.float64)
    floor = max(1.0, 0.01 * max(noisy.sum(), 1.0))
    w = 1.0 / np.maximum(noisy, floor)
    return w / w.max()


def units_estimate(noisy_counts: np.ndarray) -> float:
    """The number of units as a DP estimate: the sum of the noisy per-unit class counts (each unit's
    row sums to at most sqrt(k) and at least 1; with one class per unit, to exactly 1), floored at 1."""
    return max(1.0, float(np.sum(noisy_counts)))
