"""Differentially private calibration: the temperature (Guo et al. 2017) and the two-class decision
threshold, read off a Gaussian release of a class-conditional histogram of true-class margins
(``privacy/validation.py`` makes the release; serving applies the result)."""
from __future__ import annotations

import numpy as np

# Differentially private calibration: everything below reads validation logits only through a
# noisy class-conditional histogram of the true-class margin z_y - max_{j != y} z_j.
# Noisy bins are clipped at 0 after subtracting 0.8 noise std (empty bins then keep 0.1 std of phantom mass, not 0.4):
# raw negative bins make the NLL unbounded as T -> 0, and plain clipping adds phantom mass to
# the many empty bins at extreme margins.
MARGIN_EDGES = np.r_[-np.inf, np.linspace(-8, 8, 33), np.inf]
_CENTRES = np.r_[-8.25, (MARGIN_EDGES[1:-2] + MARGIN_EDGES[2:-1]) / 2, 8.25]


def true_class_margin(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    own = logits[np.arange(len(y)), y]
    other = logits.copy()
    other[np.arange(len(y)), y] = -np.inf
    return own - other.max(1)


def margin_rows(logits: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """One-hot (class, margin bin) rows of norm 1."""
    b = np.clip(np.searchsorted(MARGIN_EDGES, true_class_margin(logits, y), side="right") - 1, 0, len(_CENTRES) - 1)
    rows = np.zeros((len(y), num_classes * len(_CENTRES)))
    rows[np.arange(len(y)), np.asarray(y) * len(_CENTRES) + b] = 1.0
    return rows


def denoise(hist: np.ndarray, noise_std: float) -> np.ndarray:
    return np.clip(np.asarray(hist, np.float64) - 0.8 * noise_std, 0, None)


def temperature_from_histogram(hist: np.ndarray) -> float:
    """T minimising the margin-only NLL sum_b h_b log(1 + exp(-m_b / T)) (exact for two classes)."""
    h = np.asarray(hist, np.float64).reshape(-1, len(_CENTRES)).sum(0)
    grid = np.geomspace(0.05, 20.0, 400)
    nll = [(h * np.logaddexp(0.0, -_CENTRES / t)).sum() for t in grid]
    return float(grid[int(np.argmin(nll))])


def threshold_from_histogram(hist: np.ndarray, noise_std: float = 0.0) -> tuple[float, float]:
    """Two classes: (margin threshold t on z_1 - z_0, balanced accuracy at t); class 1 is predicted when
    z_1 - z_0 >= t. t is the centre (median) of the thresholds whose balanced accuracy is within two noise
    standard deviations of the best: on a flat curve the noisy argmax is a random draw from the plateau
    (chest: margin sd 1.2 over redraws of one release, 0.6 for the centre; docs/notebook/RESULTS.md).
    ``noise_std``: the Gaussian noise per bin (0: exact counts, the centre of the tied best)."""
    h = np.asarray(hist, np.float64).reshape(2, len(_CENTRES))
    n1, n0 = max(h[1].sum(), 1e-9), max(h[0].sum(), 1e-9)
    ts = np.linspace(-7.5, 7.5, 61)
    # class 1's true-class margin is m = z_1 - z_0; class 0's is -m
    pos, neg = _CENTRES[None] >= ts[:, None], _CENTRES[None] > -ts[:, None]
    ba = 0.5 * (pos @ h[1] / n1 + neg @ h[0] / n0)
    i = int(np.argmax(ba))
    sd = 0.5 * noise_std * np.sqrt(pos[i].sum() / n1 ** 2 + neg[i].sum() / n0 ** 2)
    t = float(np.median(ts[ba >= ba[i] - 2 * sd - 1e-12]))
    j = int(np.argmin(np.abs(ts - t)))
    return t, float(ba[j])

