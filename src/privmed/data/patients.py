"""Patients in a dataset: images per patient, and patients that appear in more than one split.

Counts only: ids are never printed. For chest_xray_pneumonia, whether the same ``person<N>`` in
train and test is the same person is checked with pixels: same-id cross-split pairs are compared
with random cross-split pairs (correlation of 32x32 thumbnails); a shared numbering of the same
people shows as much higher similarity for same-id pairs.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from privmed.data.datasets import load_record


def images_per_patient(records) -> dict:
    ids = [r.patient_id for r in records if r.patient_id]
    if not ids:
        return {"patients": 0, "images_with_id": 0, "images_without_id": len(records)}
    per = np.array(list(Counter(ids).values()))
    hist = Counter(min(int(c), 10) for c in per)
    return {"patients": int(len(per)), "images_with_id": int(per.sum()), "images_without_id": len(records) - len(ids),
            "max": int(per.max()), "median": float(np.median(per)), "mean": round(float(per.mean()), 2),
            "histogram": {("10+" if k == 10 else str(k)): int(v) for k, v in sorted(hist.items())}}


def _thumb(record, size: int = 32) -> np.ndarray:
    px = load_record(record).pixels
    from PIL import Image

    t = np.asarray(Image.fromarray((np.clip(px, 0, 1) * 255).astype(np.uint8)).resize((size, size)), np.float64).ravel()
    t -= t.mean()
    return t / max(np.linalg.norm(t), 1e-9)


def shared_patient_evidence(train, test, pairs: int = 60, seed: int = 0) -> dict:
    """Mean thumbnail correlation of same-id (train, test) pairs vs random pairs of the same classes."""
    rng = np.random.default_rng(seed)
    by_id: dict[str, list] = {}
    for r in train:
        if r.patient_id:
            by_id.setdefault(r.patient_id, []).append(r)
    same = [(by_id[r.patient_id][0], r) for r in test if r.patient_id in by_id]
    if not same:
        return {"same_id_pairs": 0}
    pick = [same[i] for i in rng.choice(len(same), min(pairs, len(same)), replace=False)]
    rand = [(train[int(rng.integers(len(train)))], b) for _, b in pick]
    rand = [(a, b) for a, b in rand if a.label == b.label] or rand
    sim = lambda ps: [float(_thumb(a) @ _thumb(b)) for a, b in ps]  # noqa: E731
    s_same, s_rand = sim(pick), sim(rand)
    return {"same_id_pairs": len(same), "compared": len(pick),
            "same_id_similarity_mean": round(float(np.mean(s_same)), 4),
            "random_pair_similarity_mean": round(float(np.mean(s_rand)), 4),
            "method": "correlation of 32x32 thumbnails, same-id train/test pairs vs random pairs of the same class"}


def format_images_per_patient(split: str, r: dict) -> str:
    if not r["patients"]:
        return f"{split}: no patient ids ({r['images_without_id']} images): the unit of privacy is the image"
    return (f"{split}: {r['patients']} patients, images per patient max {r['max']}, median {r['median']:g}, "
            f"histogram {r['histogram']}")
