"""Out-of-distribution detector on the penultimate embedding: class-conditional Mahalanobis
distance under a shrunk (Ledoit-Wolf) tied covariance, kept compact as its top principal
directions plus one isotropic variance for the rest (a probabilistic-PCA form of the same
covariance, so directions outside the top ``dims`` still count: images of another modality
often differ exactly there).

Threshold (cross-conformal): the validation embeddings are split into ``folds`` class-stratified
parts (2 = fit on one half, score the other, both ways round; default 5); a detector fitted on the
other parts scores each part, so every validation image gets a held-out score. The threshold is the finite-sample conformal quantile of these held-out scores at the target refusal
rate (default 2.5 %), so an exchangeable in-distribution image is refused with probability at most
~2.5 % (at most 1/(n+1) when n is too small for the quantile). The stored detector is then refitted
on all validation embeddings; it scores new in-distribution images no higher on average than the
smaller held-out detectors did, so the threshold is, if anything, conservative.

The block is plain JSON (stored in the bundle's ``metadata.json`` under ``"ood"``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

METHOD = "mahalanobis-tied-ledoit-wolf-ppca"
MAX_DIMS = 64
TARGET_REFUSAL = 0.025


def _ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Empirical covariance of centred ``x`` (n, d) and the Ledoit-Wolf shrinkage weight."""
    n, d = x.shape
    emp = x.T @ x / n
    mu = float(np.trace(emp)) / d
    x2 = x ** 2
    beta_ = float(np.sum(x2.T @ x2))
    delta_ = float(np.sum(emp ** 2))
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * float(np.trace(emp)) + d * mu ** 2) / d
    beta = min(beta, delta)
    shrink = 0.0 if beta <= 0 or delta <= 0 else beta / delta
    return emp, float(np.clip(shrink, 0.0, 1.0))


def _fit(emb: np.ndarray, y: np.ndarray, max_dims: int) -> dict:
    emb = np.asarray(emb, np.float64)
    classes = sorted(set(int(c) for c in y))
    means = {c: emb[y == c].mean(0) for c in classes}
    centred = emb - np.stack([means[int(c)] for c in y])
    emp, shrink = _ledoit_wolf(centred)
    d = emb.shape[1]
    mu = float(np.trace(emp)) / d
    evals, evecs = np.linalg.eigh(emp)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    shrunk = (1 - shrink) * np.clip(evals, 0, None) + shrink * mu
    k = int(min(max_dims, d - 1, max(1, len(emb) - len(classes))))
    rest = shrunk[k:]
    floor = max(mu * 1e-6, 1e-12)
    return {
        "classes": classes,
        "means": np.stack([means[c] for c in classes]),
        "components": evecs[:, :k].T.copy(),
        "variances": np.maximum(shrunk[:k], floor),
        "residual_variance": max(float(rest.mean()) if len(rest) else floor, floor),
        "shrinkage": shrink,
    }


def _scores(emb: np.ndarray, det: dict) -> np.ndarray:
    """Mahalanobis distance to the nearest class mean, (n,) for embeddings (n, d)."""
    emb = np.atleast_2d(np.asarray(emb, np.float64))
    means = np.asarray(det["means"], np.float64)
    comps = np.asarray(det["components"], np.float64)
    var = np.asarray(det["variances"], np.float64)
    diff = emb[:, None, :] - means[None, :, :]  # (n, C, d)
    z = diff @ comps.T  # (n, C, k)
    in_sub = np.sum(z ** 2 / var, -1)
    resid = np.sum(diff ** 2, -1) - np.sum(z ** 2, -1)
    d2 = in_sub + np.clip(resid, 0, None) / float(det["residual_variance"])
    return np.sqrt(d2.min(1))


def _folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint index sets, each class dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = [[] for _ in range(k)]
    start = 0
    for c in sorted(set(int(v) for v in y)):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            out[(start + j) % k].append(int(i))
        start += len(idx)
    return [np.array(sorted(f), int) for f in out if f]


def conformal_threshold(scores: np.ndarray, target: float) -> tuple[float, float]:
    """(threshold, achieved nominal refusal bound) from held-out in-distribution scores."""
    s = np.sort(np.asarray(scores, np.float64))
    n = len(s)
    k = math.ceil((n + 1) * (1 - target))
    if k <= n:
        return float(s[k - 1]), float(target)
    return float(s[-1]), float(1.0 / (n + 1))


def fit_ood(emb: np.ndarray, y: np.ndarray, seed: int = 0, *, target_refusal: float = TARGET_REFUSAL,
            max_dims: int = MAX_DIMS, folds: int = 5) -> dict:
    """Fit the detector on validation embeddings ``emb`` (n, d) with labels ``y`` (n,)."""
    emb = np.asarray(emb, np.float64)
    y = np.asarray(y).astype(int)
    if emb.ndim != 2 or len(emb) != len(y):
        raise ValueError(f"fit_ood needs embeddings (n, d) and n labels, got {emb.shape} and {y.shape}")
    if len(emb) < 8:
        raise ValueError(f"fit_ood needs at least 8 validation embeddings, got {len(emb)}")
    parts = _folds(y, max(2, min(folds, len(y) // 4)), seed)
    held = np.concatenate([_scores(emb[p], _fit(np.delete(emb, p, 0), np.delete(y, p), max_dims)) for p in parts])
    threshold, bound = conformal_threshold(held, target_refusal)
    det = _fit(emb, y, max_dims)
    in_sample = _scores(emb, det)
    return {
        "method": METHOD,
        "embedding_dims": int(emb.shape[1]),
        "dims": int(len(det["variances"])),
        "n": int(len(emb)),
        "folds": len(parts),
        "calibration": f"{len(parts)}-fold cross-conformal on validation (each part scored by a detector fitted "
                       "on the others); final detector refitted on all validation embeddings",
        "target_refusal": float(target_refusal),
        "quantile": float(1 - target_refusal),
        "refusal_bound": bound,
        "threshold": threshold,
        "heldout_refused": float(np.mean(held > threshold)),
        "insample_refused": float(np.mean(in_sample > threshold)),
        "shrinkage": round(float(det["shrinkage"]), 6),
        "seed": int(seed),
        "classes": det["classes"],
        "means": np.round(det["means"], 7).tolist(),
        "components": np.round(det["components"], 7).tolist(),
        "variances": [float(v) for v in det["variances"]],
        "residual_variance": float(det["residual_variance"]),
        "score": "Mahalanobis distance to the nearest class mean; refuse when above threshold",
    }


def ood_score(emb_vector, ood_block: dict) -> float:
    """Distance of one embedding (d,) from the validation distribution; compare to ``threshold``."""
    v = np.asarray(emb_vector, np.float64).reshape(1, -1)
    if v.shape[1] != len(ood_block["means"][0]):
        raise ValueError(f"embedding has {v.shape[1]} dims, the OOD block expects {len(ood_block['means'][0])}")
    return float(_scores(v, ood_block)[0])


def ood_scores(emb: np.ndarray, ood_block: dict) -> np.ndarray:
    return _scores(emb, ood_block)


def validation_embeddings(bundle_path: str | Path, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Recompute the bundle's validation embeddings from its recorded training config."""
    import torch

    from privmed.config import TrainConfig
    from privmed.inference.bundle import load_bundle
    from privmed.training.data import load_pixels, model_inputs, split_records

    net, meta = load_bundle(Path(bundle_path))
    train_cfg = dict(meta.get("training") or {})
    cfg = TrainConfig(**train_cfg)
    splits = split_records(cfg)
    want = (meta.get("dataset_fingerprint") or {}).get("val")
    if want and splits.fingerprint["val"] != want:
        raise ValueError("the validation split recomputed from the dataset differs from the one the bundle was "
                         "trained with (the data changed); cannot refit the OOD detector on it")
    pixels = load_pixels(splits.val, cfg, progress=progress)
    inputs = model_inputs(net, pixels, progress=progress)
    with torch.no_grad():
        embs = [net.trainable_forward_with_embedding(inputs[i:i + 256])[1] for i in range(0, len(inputs), 256)]
    return torch.cat(embs).numpy(), np.array([r.label for r in splits.val])


def refit(bundle_path: str | Path, *, seed: int | None = None, target_refusal: float = TARGET_REFUSAL,
          data_root: str | Path | None = None, progress: bool = False) -> dict:
    """Add (or replace) the ``ood`` block of an existing bundle, from its validation split."""
    from privmed.inference.bundle import read_metadata, update_metadata

    bundle_path = Path(bundle_path)
    meta = read_metadata(bundle_path)
    if data_root is not None:
        training = dict(meta.get("training") or {})
        training["data_root"] = str(data_root)
        meta_training = training
    else:
        meta_training = None
    if meta_training is not None:  # temporary override without touching the stored config
        import json
        import tempfile

        from privmed.inference.bundle import METADATA, WEIGHTS

        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            (t / WEIGHTS).symlink_to((bundle_path / WEIGHTS).resolve())
            m = dict(meta, training=meta_training)
            (t / METADATA).write_text(json.dumps(m))
            emb, y = validation_embeddings(t, progress)
    else:
        emb, y = validation_embeddings(bundle_path, progress)
    block = fit_ood(emb, y, seed=int(seed if seed is not None else (meta.get("training") or {}).get("seed", 0)),
                    target_refusal=target_refusal)
    update_metadata(bundle_path, ood=block)
    return block
