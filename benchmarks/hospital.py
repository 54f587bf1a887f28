"""Hospital measurements for docs/HOSPITAL.md: OCR redaction recall on real X-rays with synthetic
burned-in identifiers, and OCR-assisted labelling accuracy on real images with printed class names.

    python benchmarks/hospital.py redaction --per-dataset 50
    python benchmarks/hospital.py labels --per-class 15
    python benchmarks/hospital.py redaction-cost --per-dataset 20
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from privmed.config import default_data_root

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic generators: tests/support


def redaction(n: int, seed: int) -> dict:
    from support.burned_in import measure

    root = default_data_root()
    rng = random.Random(seed)
    out = {}
    for ds in ("chest_xray_pneumonia", "covid19_xray"):
        files = sorted(p for p in (root / ds / "test").rglob("*") if p.is_file())
        t = time.time()
        r = measure(rng.sample(files, n), seed=seed)
        r["seconds"] = round(time.time() - t, 1)
        out[ds] = r
    return out


def redaction_cost(n: int, seed: int) -> dict:
    """Clean real test images, redacted as the API's redact=true does: how much area goes black, how
    far the default model's probabilities move, seconds per image."""
    import numpy as np

    from privmed.config import bundles_dir
    from privmed.data.read import load_image
    from privmed.inference import load_model
    from privmed.inference.service import redact_image

    root = default_data_root()
    rng = random.Random(seed)
    out = {}
    for ds in ("chest_xray_pneumonia", "covid19_xray"):
        if not (bundles_dir() / ds / "metadata.json").is_file():
            continue
        model = load_model(bundles_dir() / ds)
        files = sorted(p for p in (root / ds / "test").rglob("*") if p.is_file())
        dps, areas, secs, with_boxes = [], [], [], 0
        for f in rng.sample(files, n):
            img = load_image(f.read_bytes())
            t = time.time()
            red, k = redact_image(img)
            secs.append(time.time() - t)
            with_boxes += k > 0
            areas.append(float((red.pixels != img.pixels).mean()))
            p0, p1 = model.predict(img).probabilities, model.predict(red).probabilities
            dps.append(max(abs(p0[c] - p1[c]) for c in p0))
        out[ds] = {"images": n, "images_with_regions": with_boxes, "mean_area_changed": round(float(np.mean(areas)), 4),
                   "max_area_changed": round(float(np.max(areas)), 4), "max_abs_dp": round(float(np.max(dps)), 4),
                   "mean_abs_dp": round(float(np.mean(dps)), 4), "images_dp_over_0.02": int(sum(d > 0.02 for d in dps)),
                   "seconds_per_image": round(float(np.mean(secs)), 2)}
    return out


def labels(per_class: int, seed: int) -> dict:
    from support.label_ocr import measure

    root = default_data_root()
    out = {}
    for ds in ("chest_xray_pneumonia", "brain_tumor_mri", "covid19_xray"):
        t = time.time()
        r = measure(root / ds, "test", per_class, seed=seed)
        r["seconds"] = round(time.time() - t, 1)
        out[ds] = r
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["redaction", "labels", "redaction-cost"])
    p.add_argument("--per-dataset", type=int, default=50)
    p.add_argument("--per-class", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.what == "redaction-cost":
        r = redaction_cost(a.per_dataset, a.seed)
    else:
        r = redaction(a.per_dataset, a.seed) if a.what == "redaction" else labels(a.per_class, a.seed)
    print(json.dumps(r, indent=2))
