"""Split a training set into hospitals by unit of privacy (patient): every image of a patient goes
to the same hospital, so no patient is shared and each hospital's guarantee covers whole patients.

``iid``: units shuffled with the seed and dealt round-robin. ``label-skew``: for each class, the
units whose (majority) label is that class are shared out in proportions drawn from a symmetric
Dirichlet(alpha) (small alpha: each hospital sees mostly one class). Both are reproducible from
the seed and depend on nothing but unit labels, so the same command gives the same hospitals.
"""
from __future__ import annotations

import numpy as np

from privmed.errors import DatasetError

MIN_UNITS = 20  # below this a hospital's DP-SGD is all noise (q <= 1/4 needs >= 4 units; 20 is a floor)


def unit_labels(units: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """The majority label of each unit's images (ties: the lower class index)."""
    n = int(units.max()) + 1
    counts = np.zeros((n, n_classes), dtype=np.int64)
    np.add.at(counts, (units, labels), 1)
    return counts.argmax(1)


def partition(units: np.ndarray, labels: np.ndarray, n_classes: int, hospitals: int, scheme: str = "iid",
              alpha: float = 0.5, seed: int = 0) -> list[np.ndarray]:
    """Image indices of each hospital. ``units[i]`` is the unit of image i."""
    if hospitals < 1:
        raise DatasetError(f"--hospitals must be >= 1 (got {hospitals})")
    if scheme not in ("iid", "label-skew"):
        raise DatasetError(f"unknown partition '{scheme}'; choose iid or label-skew")
    if scheme == "label-skew" and not alpha > 0:
        raise DatasetError(f"--alpha must be > 0 for label-skew (got {alpha}); small alpha = strong skew")
    units, labels = np.asarray(units), np.asarray(labels)
    n_units = int(units.max()) + 1
    rng = np.random.default_rng(seed)
    owner = np.empty(n_units, dtype=np.int64)
    if scheme == "iid":
        order = rng.permutation(n_units)
        owner[order] = np.arange(n_units) % hospitals
    else:
        ul = unit_labels(units, labels, n_classes)
        for c in range(n_classes):
            members = rng.permutation(np.flatnonzero(ul == c))
            share = rng.dirichlet(np.full(hospitals, alpha))
            cuts = np.round(np.cumsum(share)[:-1] * len(members)).astype(int)
            for h, part in enumerate(np.split(members, cuts)):
                owner[part] = h
    sizes = np.bincount(owner, minlength=hospitals)
    if sizes.min() < MIN_UNITS:
        raise DatasetError(f"partition gives a hospital {int(sizes.min())} units (patients), fewer than {MIN_UNITS}: "
                           "use fewer --hospitals, another --seed, or a larger --alpha")
    img_owner = owner[units]
    return [np.flatnonzero(img_owner == h) for h in range(hospitals)]
