"""Hospital measurements for docs/HOSPITAL.md: OCR redaction recall on real X-rays with synthetic
burned-in identifiers, and OCR-assisted labelling accuracy on real images with printed class names.

    python benchmarks/hospital.py redaction --per-dataset 50
    python benchmarks/hospital.py labels --per-class 15
"""
from __future__ import annotations

import argparse
import json
import random
import time

from privmed.config import default_data_root


def redaction(n: int, seed: int) -> dict:
    from privmed.evaluation.burned_in import measure

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


def labels(per_class: int, seed: int) -> dict:
    from privmed.evaluation.label_ocr import measure

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
    p.add_argument("what", choices=["redaction", "labels"])
    p.add_argument("--per-dataset", type=int, default=50)
    p.add_argument("--per-class", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    r = redaction(a.per_dataset, a.seed) if a.what == "redaction" else labels(a.per_class, a.seed)
    print(json.dumps(r, indent=2))
