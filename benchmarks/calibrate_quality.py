"""Calibrate the quality gate thresholds in ``privmed.data.quality`` on the real data.

For every test image of the three shared datasets (``--split train`` for more), compute the
quality metrics of the image and of degraded copies, print metric percentiles, and print the
pass rate of real images and the reject rate of each degradation under the current defaults.

    python benchmarks/calibrate_quality.py [--data-root DIR] [--split test] [--limit N]

The defaults in ``QualityThresholds`` were chosen from this output: each threshold sits in the
gap between the worst real image and the best degraded one, nearer the degraded side.
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from privmed.config import DATASETS, default_data_root
from privmed.data.datasets import open_dataset
from privmed.data.quality import WORK_SIZE, QualityThresholds, assess, compute_metrics


def degrade(pixels: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The failure modes the gate must catch."""
    small = cv2.resize(pixels, (WORK_SIZE, WORK_SIZE), interpolation=cv2.INTER_AREA)
    if kind == "blur_s4":  # heavy defocus / motion: sigma 4 px at 224 px
        return cv2.GaussianBlur(small, (0, 0), 4.0)
    if kind == "dark_x0.05":  # black frame, exposure failure
        return pixels * 0.05
    if kind == "washed_out":  # overexposed: everything near white
        return 0.95 + 0.05 * pixels
    if kind == "noise":  # uniform noise field at the image's own size
        return rng.random(pixels.shape, dtype=np.float32)
    if kind == "constant":
        return np.full_like(pixels, 0.5)
    raise ValueError(kind)


DEGRADATIONS = ("blur_s4", "dark_x0.05", "washed_out", "noise", "constant")
METRICS = ("std", "p01", "p99", "contrast", "sharpness", "neighbour_corr")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=0, help="images per dataset (0 = all)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    t = QualityThresholds()
    print("thresholds:", t)
    for name in DATASETS:
        ds = open_dataset(name, args.data_root or default_data_root())
        records = ds.records(args.split)
        if args.limit:
            records = [records[i] for i in sorted(rng.choice(len(records), args.limit, replace=False))]
        start = time.perf_counter()
        real, failures = [], []
        rejected = {k: 0 for k in DEGRADATIONS}
        deg_metrics = {k: [] for k in DEGRADATIONS}
        for rec in records:
            img = ds.load(rec)
            m = compute_metrics(img.pixels)
            real.append(m)
            verdict = assess(img, t)
            if not verdict.ok:
                failures.append((rec.path.name, verdict.codes))
            for kind in DEGRADATIONS:
                bad = degrade(img.pixels, kind, rng)
                deg_metrics[kind].append(compute_metrics(bad))
                rejected[kind] += not assess(bad, t).ok
        n = len(records)
        secs = time.perf_counter() - start
        print(f"\n== {name}/{args.split}: {n} images, {secs:.1f} s")
        print(f"real pass rate: {1 - len(failures) / n:.2%}  ({len(failures)} rejected)")
        for fname, codes in failures[:10]:
            print(f"   rejected {fname}: {codes}")
        for kind in DEGRADATIONS:
            print(f"degraded {kind:11s} reject rate: {rejected[kind] / n:.2%}")
        _print_percentiles("real", real)
        for kind in DEGRADATIONS:
            _print_percentiles(kind, deg_metrics[kind])


def _print_percentiles(label: str, rows: list[dict]) -> None:
    print(f"  {label}: metric  min / p1 / p50 / p99 / max")
    for key in METRICS:
        v = np.array([r[key] for r in rows])
        q = np.percentile(v, [0, 1, 50, 99, 100])
        print(f"     {key:15s} " + " / ".join(f"{x:.4f}" for x in q))


if __name__ == "__main__":
    main()
