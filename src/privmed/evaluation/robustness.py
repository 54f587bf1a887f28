"""Accuracy under image degradations: low light, noise, blur, JPEG compression, low contrast.

Each degradation has three severities and is applied to the decoded grayscale test image
(values in [0, 1], at the file's own resolution) *before* the bundle's preprocessing, the way a
worse acquisition would reach the model; then the served batched predictor (``Model.scores_many``:
``Model.batch`` + ``Model.scores``, torch or ONNX Runtime), as in ``privmed evaluate``.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageFilter

SEVERITIES = {
    "darken": (0.7, 0.5, 0.3),          # brightness scale (and gamma 1/scale^0.5): low light
    "gaussian_noise": (0.03, 0.06, 0.12),  # std on [0, 1]
    "blur": (1.0, 2.0, 4.0),            # Gaussian sigma in pixels of a 224-pixel image (scaled to the file)
    "jpeg": (50, 20, 8),                # JPEG quality
    "low_contrast": (0.7, 0.5, 0.3),    # contrast scale about the mean
}


def degrade(pixels: np.ndarray, kind: str, level: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """One degradation of a grayscale float image in [0, 1]; returns float32 in [0, 1]."""
    x = np.asarray(pixels, dtype=np.float32)
    if kind == "darken":
        out = (x ** (1 / np.sqrt(level))) * level
    elif kind == "gaussian_noise":
        rng = rng or np.random.default_rng(0)
        out = x + rng.normal(0, level, x.shape).astype(np.float32)
    elif kind == "blur":
        radius = level * max(x.shape) / 224
        im = PILImage.fromarray(np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8))
        out = np.asarray(im.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255
    elif kind == "jpeg":
        buf = io.BytesIO()
        PILImage.fromarray(np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(level))
        out = np.asarray(PILImage.open(io.BytesIO(buf.getvalue())), np.float32) / 255
    elif kind == "low_contrast":
        m = x.mean()
        out = (x - m) * level + m
    else:
        raise ValueError(f"unknown degradation '{kind}'; choose one of {', '.join(SEVERITIES)}")
    return np.clip(out, 0, 1).astype(np.float32)


def robustness(bundle: str | Path, dataset: str | None = None, data_root: Path | None = None,
               max_images: int | None = None, seed: int = 0, kinds=None, progress: bool = False,
               batch: int = 64) -> dict:
    """Accuracy (and macro F1) on the clean and degraded test split of a bundle's dataset.

    Streams the split: ``batch`` images at native resolution are in memory at a time (the whole split
    at native resolution is GBs); each degradation keeps its own generator, drawn in image order, so
    the numbers do not depend on ``batch``."""
    from privmed.config import TrainConfig
    from privmed.data.datasets import load_record
    from privmed.evaluation.metrics import classification_report
    from privmed.inference.predictor import load_model
    from privmed.training.data import test_records

    model = load_model(bundle)
    cfg = TrainConfig(dataset=dataset or model.bundle.dataset, preprocess=model.bundle.preprocess_args(),
                      **({"data_root": data_root} if data_root else {}))
    records, n_leaked = test_records(cfg)
    rng = np.random.default_rng(seed)
    if max_images and len(records) > max_images:
        records = [records[i] for i in np.sort(rng.choice(len(records), max_images, replace=False))]
    labels = np.array([r.label for r in records])
    conds = [("clean", 0, None)] + [(k, sev, lv) for k in kinds or SEVERITIES
                                    for sev, lv in enumerate(SEVERITIES[k], 1)]
    rngs = {(k, sev): np.random.default_rng(seed + sev) for k, sev, _ in conds[1:]}
    probs: dict = {(k, sev): [] for k, sev, _ in conds}

    for start in range(0, len(records), batch):
        raw = [load_record(r).pixels for r in records[start:start + batch]]
        for k, sev, lv in conds:
            imgs = raw if k == "clean" else [degrade(im, k, lv, rngs[(k, sev)]) for im in raw]
            probs[(k, sev)].append(model.scores_many(imgs, batch)[0])  # the served path
        del raw

    def score(key) -> dict:
        p = np.concatenate(probs[key])
        rep = classification_report(labels, p, model.classes, pred=model.label_index(p))  # the served decision
        return {"accuracy": rep["accuracy"], "f1_macro": rep["f1_macro"], "auc": rep["auc"]}

    out = {"bundle": str(bundle), "dataset": cfg.dataset, "n": len(records),
           "private": {"leaked_test_images_removed": n_leaked},  # a function of the training images (issue 29)
           "applied": "to the decoded test image before the bundle's preprocessing", "clean": score(("clean", 0)),
           "degradations": {}}
    for kind in kinds or SEVERITIES:
        out["degradations"][kind] = []
        for sev, level in enumerate(SEVERITIES[kind], 1):
            res = score((kind, sev))
            out["degradations"][kind].append({"severity": sev, "level": level, **res,
                                              "accuracy_drop": out["clean"]["accuracy"] - res["accuracy"]})
            if progress:
                print(f"  {kind} s{sev}: acc {res['accuracy']:.3f}")
    return out


def robustness_table(res: dict) -> str:
    """Markdown: rows degradations, columns severities (accuracy)."""
    lines = ["| degradation | severity 1 | severity 2 | severity 3 |", "|---|---|---|---|",
             f"| none (clean) | {res['clean']['accuracy']:.3f} | | |"]
    for kind, rows in res["degradations"].items():
        cells = " | ".join(f"{r['accuracy']:.3f} ({kind_level(kind, r['level'])})" for r in rows)
        lines.append(f"| {kind} | {cells} |")
    return "\n".join(lines)


def kind_level(kind: str, level) -> str:
    return {"darken": f"x{level}", "gaussian_noise": f"sd {level}", "blur": f"sigma {level}px",
            "jpeg": f"q{level}", "low_contrast": f"x{level}"}[kind]
