"""How the two-class decision threshold moves from one DP release to the next (issue 31, item 2).

    .venv/bin/python benchmarks/threshold_release_sim.py [BUNDLE] [--releases 300]

The bundle's threshold is read off one noisy release of the validation margin histogram
(``privacy.validation.validation_releases``). This rebuilds the exact per-unit histogram of the bundle's own
validation split and redraws the release's noise (the bundle's noise multiplier, histogram weight 0.8)
many times, reading the threshold with the argmax rule (before 2026-12-05) and with the centre of the
thresholds within noise of the best (``calibration.threshold_from_histogram(hist, noise_std)``). Validation
only: the spread of the threshold and the exact validation balanced accuracy at it. Private data are read;
only aggregates are printed. The redraws use numpy's generator: nothing here is released.
"""
from __future__ import annotations

import argparse

import numpy as np

from privmed.bundle.format import load_bundle
from privmed.config import TrainConfig
from privmed.models.batched import batched_forward
from privmed.privacy import calibration as cal
from privmed.privacy.validation import W_HIST, per_unit_mean
from privmed.training.data import load_pixels, model_inputs, split_records, unit_ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", nargs="?", default="bundles/chest_xray_pneumonia")
    ap.add_argument("--releases", type=int, default=300)
    a = ap.parse_args()
    model, bundle = load_bundle(a.bundle)
    meta = bundle.raw
    cfg = TrainConfig(**meta["training"])
    splits = split_records(cfg)
    logits = batched_forward(model.trainable, model_inputs(model, load_pixels(splits.val, cfg, False), False)).numpy()
    y = np.array([r.label for r in splits.val])
    units, _ = unit_ids(splits.val, meta["privacy"]["unit_of_privacy"])
    exact = per_unit_mean(cal.margin_rows(logits, y, 2), units.numpy()).sum(0)
    margin = logits[:, 1] - logits[:, 0]

    def balanced(t: float) -> float:
        return 0.5 * ((margin[y == 1] >= t).mean() + (margin[y == 0] < t).mean())

    sigma = next(r["noise_multiplier"] for r in meta["privacy"]["releases"] if "margin histogram" in r["release"])
    std = sigma / W_HIST
    rng = np.random.default_rng(0)
    draws = [exact + rng.normal(0, std, exact.shape) for _ in range(a.releases)]
    print(f"{a.bundle}: {len(y)} validation images, histogram noise std {std:.2f} per bin, {a.releases} redraws")
    print(f"exact histogram: threshold {cal.threshold_from_histogram(exact)[0]:+.2f}; validation balanced accuracy "
          f"at margin 0 {balanced(0.0):.3f}; shipped threshold {meta['decision']['threshold_margin']:+.2f}")
    print("| rule | threshold mean | sd | 5-95 % | validation balanced accuracy mean | worst |")
    print("|---|---|---|---|---|---|")
    for name, noise in (("argmax (before)", 0.0), ("centre of the thresholds within noise of the best", std)):
        t = np.array([cal.threshold_from_histogram(h, noise)[0] for h in draws])
        ba = np.array([balanced(v) for v in t])
        lo, hi = np.percentile(t, [5, 95])
        print(f"| {name} | {t.mean():+.2f} | {t.std():.2f} | {lo:+.2f} to {hi:+.2f} | {ba.mean():.3f} | "
              f"{ba.min():.3f} |")


if __name__ == "__main__":
    main()
