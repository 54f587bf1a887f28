"""Out-of-distribution detectors released with differential privacy: their scoring, as serving applies
them. Their fitting (the Gaussian releases and what is read off them) is ``privacy/ood.py``.

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

from privmed.privacy.ood import MEAN_METHOD, mean_scores, unit_length

METHOD = "dp-mahalanobis-tied-random-projection"
DIMS = 32
PROJECTION_SEED = 20240601  # public constant: the projection must not depend on data


@functools.lru_cache(maxsize=8)
def projection(d: int, k: int = DIMS, seed: int = PROJECTION_SEED) -> np.ndarray:
    """(d, k) orthonormal columns, computed once per shape: redone on every prediction, this QR
    took 1-3 s per call at load average 28 on the 2-core machine (OpenBLAS threads contending),
    more than the network. Read-only: the cached array is shared."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, k)))
    q.setflags(write=False)
    return q


def embed(emb: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Unit-length projection of unit-length embeddings: every row has norm exactly 1."""
    return unit_length(unit_length(np.atleast_2d(np.asarray(emb, np.float64))) @ proj)


def scores(emb: np.ndarray, block: dict) -> np.ndarray:
    z = embed(emb, projection(int(block["embedding_dims"]), int(block["dims"]), int(block["projection_seed"])))
    means = np.asarray(block["means"], np.float64)
    comps = np.asarray(block["components"], np.float64)
    var = np.asarray(block["variances"], np.float64)
    diff = z[:, None, :] - means[None, :, :]
    d2 = np.sum((diff @ comps.T) ** 2 / var, -1)
    return np.sqrt(d2.min(1))


def ood_score(emb_vector, ood_block: dict) -> float:
    """Distance of one embedding (d,) from the validation distribution; compare to ``threshold``."""
    v = np.asarray(emb_vector, np.float64).reshape(1, -1)
    if v.shape[1] != int(ood_block["embedding_dims"]):
        raise ValueError(f"embedding has {v.shape[1]} dims, the OOD block expects {ood_block['embedding_dims']}")
    return float(ood_scores(v, ood_block)[0])


def ood_scores(emb: np.ndarray, ood_block: dict) -> np.ndarray:
    return (mean_scores if ood_block.get("method") == MEAN_METHOD else scores)(emb, ood_block)
