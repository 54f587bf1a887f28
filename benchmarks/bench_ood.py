"""Out-of-distribution refusal of the default bundles, through the served predictor.

    python benchmarks/bench_ood.py [--n 200] [--bundles DIR ...]

For each bundle with a detector: its threshold, the share of its own test images whose OOD score is
above it, and the share of each other dataset's test images above it (200 random images each, seed 0)."""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from privmed.config import bundles_dir, default_data_root
from privmed.inference.predictor import load_model

SETS = ["chest_xray_pneumonia", "brain_tumor_mri", "covid19_ct", "covid19_xray"]


def test_images(root: Path, ds: str, n: int) -> list[Path]:
    files = sorted(p for p in (root / ds / "test").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    random.Random(0).shuffle(files)
    return files[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--bundles", nargs="*", type=Path, default=[bundles_dir() / ds for ds in SETS])
    args = ap.parse_args()
    root = default_data_root()
    print("| bundle | threshold | " + " | ".join(f"{ds} refused" for ds in SETS) + " |")
    print("|---" * (len(SETS) + 2) + "|")
    for path in args.bundles:
        m = load_model(path)
        if not m.ood:
            print(f"| {path} | no detector |" + " - |" * len(SETS))
            continue
        t = m.ood["threshold"]
        rates = [np.mean([m.predict(f).ood_score > t for f in test_images(root, ds, args.n)]) for ds in SETS]
        print(f"| {path} ({m.metadata['dataset']}) | {t:.3f} | " + " | ".join(f"{100 * r:.1f} %" for r in rates) + " |")


if __name__ == "__main__":
    main()
