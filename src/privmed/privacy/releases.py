"""Gaussian releases of statistics of private images (counts, sums, histograms).

Each unit contributes one row whose L2 norm is at most ``sensitivity``; the release is the sum of
the rows plus N(0, (sigma * sensitivity)^2) per coordinate from the secret generator. In an
accountant's history it is the entry (sigma, 1.0, 1).
"""
from __future__ import annotations

import numpy as np
import torch

from privmed.privacy.randomness import secret_generator


def gaussian_sum(rows: np.ndarray, sensitivity: float, sigma: float, gen: torch.Generator | None = None) -> np.ndarray:
    rows = np.asarray(rows, np.float64)
    norms = np.linalg.norm(rows.reshape(len(rows), -1), axis=1) if len(rows) else np.zeros(0)
    if len(rows) and norms.max() > sensitivity * (1 + 1e-6):
        raise ValueError(f"a row has norm {norms.max():.4g} > sensitivity {sensitivity}: clip before releasing")
    total = rows.sum(0) if len(rows) else np.zeros(rows.shape[1:])
    noise = torch.normal(0.0, sigma * sensitivity, size=tuple(total.shape), generator=gen or secret_generator(),
                         dtype=torch.float64).numpy()
    return total + noise


def unit_class_rows(labels: np.ndarray, units: np.ndarray, num_classes: int) -> np.ndarray:
    """One row per unit: its images' class counts scaled to L2 norm 1 (a unit with images of one
    class contributes one count to that class)."""
    n_units = int(units.max()) + 1 if len(units) else 0
    counts = np.zeros((n_units, num_classes))
    np.add.at(counts, (units, labels), 1.0)
    return counts / np.maximum(np.linalg.norm(counts, axis=1, keepdims=True), 1e-12)


def dp_class_weights(labels: np.ndarray, units: np.ndarray, num_classes: int, sigma: float,
                     gen: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(noisy per-class unit counts, weights in (0, 1]): inverse noisy frequency, largest = 1."""
    noisy = gaussian_sum(unit_class_rows(labels, units, num_classes), 1.0, sigma, gen)
    return noisy, weights_from_counts(noisy)


def weights_from_counts(noisy: np.ndarray) -> np.ndarray:
    """Inverse noisy frequency, largest = 1 (post-processing of DP counts; federated: their sum)."""
    noisy = np.asarray(noisy, np.float64)
    floor = max(1.0, 0.01 * max(noisy.sum(), 1.0))
    w = 1.0 / np.maximum(noisy, floor)
    return w / w.max()
