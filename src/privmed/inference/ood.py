"""Out-of-distribution detectors released with differential privacy.

Bundles trained since 2026-12-05 (``MEAN_METHOD``): the distance of an embedding's mid-level part
(unit length) to the nearest DP class mean. The means come from one Gaussian release on the
*training* units (rows [onehot(class) x z, onehot(class)], norm sqrt(2); about nine times as many
units as validation, so the means are nine times less noisy), composed into the training side's
epsilon like the DP class counts; the threshold from a histogram of the validation units' scores
(held out from the means), in bins 10 % wide. For ``effnet_lite0_multi`` the mid-level part is the
four MBConv taps (704 of 3,264 dims): the ImageNet head taps mostly carry object semantics, and
with them the detector missed adult films a radiologist tells apart at a glance
(``benchmarks/ood_shift.py``). That detector also sees what a phone camera does to a film (blur,
moire, JPEG: it refused two thirds of simulated phone photos of test films at the file threshold), so the
same validation release carries a second histogram, of the scores of simulated phone photos of the
validation images (``pipeline.camera_photos``), and uploads with ``source="camera"`` are held to its
threshold (``camera_threshold``). A site calibration fits the same detector on its sample.

Older bundles (``METHOD``, read as they are): an embedding (the input of the first Linear layer) is
scaled to unit length, projected on a fixed random orthonormal basis of ``DIMS`` directions (public:
drawn from a constant seed, independent of any image) and scaled to unit length again. Each
validation unit contributed one row [onehot(class) x z, z z^T, onehot(class)] of norm sqrt(3) to a
Gaussian release; class means and a tied covariance (eigenvalues floored at the noise level) came
from the noisy sums, and the score is the Mahalanobis distance to the nearest class mean. Only their
scoring (``scores``) is kept here; the fitting code went with the change of method (git history,
before 2026-12-05 evening). Both methods read their threshold from a second Gaussian release: a
histogram of the validation scores, read from the top down so that the noise of few bins enters the
quantile.

What the bundle keeps (means, directions, variances, threshold) is post-processing of those two
releases: it cannot act as a membership oracle for validation images beyond the stated epsilon.
(The previous, non-private detector shipped exact validation statistics: AUC 1.00 for telling its
validation images from others on covid19_xray.)
"""
from __future__ import annotations

import functools

import numpy as np

from privmed.models.registry import LiteMulti

METHOD = "dp-mahalanobis-tied-random-projection"
DIMS = 32
PROJECTION_SEED = 20240601  # public constant: the projection must not depend on data
TARGET_REFUSAL = 0.025
SCORE_EDGES = np.r_[0.0, np.geomspace(0.5, 500.0, 24), np.inf]
MIN_UNITS = 100  # below this the noise swamps the statistics; the bundle says no detector was fitted


@functools.lru_cache(maxsize=8)
def projection(d: int, k: int = DIMS, seed: int = PROJECTION_SEED) -> np.ndarray:
    """(d, k) orthonormal columns, computed once per shape: redone on every prediction, this QR
    took 1-3 s per call at load average 28 on the 2-core machine (OpenBLAS threads contending),
    more than the network. Read-only: the cached array is shared."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, k)))
    q.setflags(write=False)
    return q


def _unit(e: np.ndarray) -> np.ndarray:
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def embed(emb: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Unit-length projection of unit-length embeddings: every row has norm exactly 1."""
    return _unit(_unit(np.atleast_2d(np.asarray(emb, np.float64))) @ proj)


def scores(emb: np.ndarray, block: dict) -> np.ndarray:
    z = embed(emb, projection(int(block["embedding_dims"]), int(block["dims"]), int(block["projection_seed"])))
    means = np.asarray(block["means"], np.float64)
    comps = np.asarray(block["components"], np.float64)
    var = np.asarray(block["variances"], np.float64)
    diff = z[:, None, :] - means[None, :, :]
    d2 = np.sum((diff @ comps.T) ** 2 / var, -1)
    return np.sqrt(d2.min(1))


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


MEAN_METHOD = "dp-class-mean-distance"
MEAN_SENSITIVITY = float(np.sqrt(2.0))
MEAN_EDGES = np.r_[0.0, np.exp(np.arange(np.log(0.05), np.log(4.0), np.log(1.1))), np.inf]


def feature_columns(d: int) -> tuple[int, int]:
    """The embedding columns the mean detector reads: the four mid-level taps of effnet_lite0_multi
    (its embedding ends with two 1,280-d head taps), else all of it. A public fact of the model."""
    return (0, LiteMulti.MID_DIMS) if d == LiteMulti.DIMS else (0, d)


def unit_part(emb: np.ndarray, cols) -> np.ndarray:
    return _unit(np.atleast_2d(np.asarray(emb, np.float64))[:, cols[0]:cols[1]])


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


def ood_score(emb_vector, ood_block: dict) -> float:
    """Distance of one embedding (d,) from the validation distribution; compare to ``threshold``."""
    v = np.asarray(emb_vector, np.float64).reshape(1, -1)
    if v.shape[1] != int(ood_block["embedding_dims"]):
        raise ValueError(f"embedding has {v.shape[1]} dims, the OOD block expects {ood_block['embedding_dims']}")
    return float(ood_scores(v, ood_block)[0])


def ood_scores(emb: np.ndarray, ood_block: dict) -> np.ndarray:
    return (mean_scores if ood_block.get("method") == MEAN_METHOD else scores)(emb, ood_block)
