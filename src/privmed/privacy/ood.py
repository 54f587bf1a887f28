"""Out-of-distribution detectors with differential privacy, the fitting half: the per-unit rows of
the Gaussian releases (class means on the training units, score histograms on the validation
units) and what is read off the noisy sums (class means, refusal threshold). Serving applies the
result (``inference/ood.py``); the method's rationale is in that module's docstring.
"""
from __future__ import annotations

import numpy as np

from privmed.models.registry import LiteMulti

MEAN_METHOD = "dp-class-mean-distance"
TARGET_REFUSAL = 0.025
SCORE_EDGES = np.r_[0.0, np.geomspace(0.5, 500.0, 24), np.inf]
MIN_UNITS = 100  # below this the noise swamps the statistics; the bundle says no detector was fitted


def unit_length(e: np.ndarray) -> np.ndarray:
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def score_rows(s: np.ndarray, edges: np.ndarray = SCORE_EDGES) -> np.ndarray:
    """One-hot histogram rows (norm 1) of the scores."""
    idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, len(edges) - 2)
    return np.eye(len(edges) - 1)[idx]


MAX_OVER_MEDIAN = 2.0


def _quantile_from_top(h: np.ndarray, share: float, edges: np.ndarray = SCORE_EDGES) -> float:
    """Score above which ``share`` of the histogram's mass lies, interpolated geometrically inside
    its bin (bins are 35 % wide: the upper edge alone left the refusal rate anywhere from 0 to the target)."""
    total, above = max(h.sum(), 1.0), 0.0
    for b in range(len(h) - 1, -1, -1):
        if above + h[b] > share * total:
            lo, hi = edges[b], edges[b + 1]
            if not np.isfinite(hi):
                return float(lo)
            f = (share * total - above) / h[b]  # share of this bin that lies above the score
            return float(hi - f * (hi - lo)) if lo == 0 else float(hi * (lo / hi) ** f)
        above += h[b]
    return float(edges[1])


def _bulk(h: np.ndarray) -> np.ndarray:
    """The histogram up to the first empty bin above its median bin: mass past a gap is noise that
    passed the bar, not a tail (validation scores of one population fill neighbouring 35 % bins)."""
    c = np.cumsum(h)
    if c[-1] <= 0:
        return h
    out, start = h.copy(), int(np.searchsorted(c, c[-1] / 2)) + 1
    gaps = np.flatnonzero(h[start:] == 0)
    if gaps.size:
        out[start + gaps[0]:] = 0.0
    return out


def threshold_from_histogram(hist: np.ndarray, target: float = TARGET_REFUSAL, noise_std: float = 0.0,
                             edges: np.ndarray = SCORE_EDGES) -> float:
    """Refusal threshold: the score above which a (noisy) fraction ``target`` of validation lies,
    capped at ``MAX_OVER_MEDIAN`` times the noisy median. Post-processing of the noisy histogram only.

    Bins below two noise standard deviations count as empty (the positive part of the noise in the
    many empty high bins would add up to phantom refusals), and mass beyond the first empty bin above
    the median is dropped (``_bulk``). Each of the ~20 empty high bins passes the 2-sigma bar 2.3 % of
    the time; before the gap rule such a phantom bin carried the threshold to the cap in 14 % of
    simulated chest releases (``benchmarks/ood_threshold_sim.py``; the shipped chest bundle's 1.77 is
    one), refusing nothing. The cap stays as a second guard: the brain MRI and CT bundles of 2026-11
    shipped thresholds 274 and 82 for scores around 1.3. In-distribution 97.5 % quantiles lie 1.26-1.59
    times the median (test splits of the three default bundles), so the cap costs a true detector little."""
    h = _bulk(np.where(np.asarray(hist, np.float64) > 2 * noise_std, hist, 0.0))
    return min(_quantile_from_top(h, target, edges), MAX_OVER_MEDIAN * _quantile_from_top(h, 0.5, edges))


MEAN_SENSITIVITY = float(np.sqrt(2.0))
MEAN_EDGES = np.r_[0.0, np.exp(np.arange(np.log(0.05), np.log(4.0), np.log(1.1))), np.inf]


def feature_columns(d: int) -> tuple[int, int]:
    """The embedding columns the mean detector reads: the four mid-level taps of effnet_lite0_multi
    (its embedding ends with two 1,280-d head taps), else all of it. A public fact of the model."""
    return (0, LiteMulti.MID_DIMS) if d == LiteMulti.DIMS else (0, d)


def unit_part(emb: np.ndarray, cols) -> np.ndarray:
    return unit_length(np.atleast_2d(np.asarray(emb, np.float64))[:, cols[0]:cols[1]])


def mean_rows(emb: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-image rows of norm sqrt(2): the unit-length part in its class's slot, and the class count."""
    z = unit_part(emb, feature_columns(emb.shape[1]))
    onehot = np.eye(num_classes)[y]
    return np.concatenate([(onehot[:, :, None] * z[:, None, :]).reshape(len(z), -1), onehot], 1)


def means_from_release(release: np.ndarray, num_classes: int, d: int) -> dict:
    """Class means from the noisy sums and counts (post-processing only)."""
    counts = np.maximum(release[-num_classes:], 1.0)
    k = (len(release) - num_classes) // num_classes
    means = release[:num_classes * k].reshape(num_classes, k) / counts[:, None]
    return {"means": means, "noisy_counts": counts, "embedding_dims": d, "columns": list(feature_columns(d))}


def mean_block(det: dict, threshold: float, fitted_on: str) -> dict:
    return {"method": MEAN_METHOD, "embedding_dims": int(det["embedding_dims"]), "columns": det["columns"],
            "target_refusal": TARGET_REFUSAL, "threshold": threshold,
            "means": np.round(det["means"], 7).tolist(), "fitted_on": fitted_on,
            "score": "Euclidean distance of the unit-length embedding part to the nearest class mean; refuse above "
                     "threshold"}


def mean_scores(emb: np.ndarray, block: dict) -> np.ndarray:
    z = unit_part(emb, block["columns"])
    means = np.asarray(block["means"], np.float64)
    return np.sqrt(((z[:, None, :] - means[None]) ** 2).sum(-1).min(1))
