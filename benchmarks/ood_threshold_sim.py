"""How often the DP OOD threshold rule (privacy.ood.threshold_from_histogram) ends at its cap, simulated.

    python benchmarks/ood_threshold_sim.py [--units 281] [--sigma 2.836] [--releases 4000]

Scores like the chest bundle's validation scores (log-normal, median 0.88, spread 0.12), one histogram
row per unit, Gaussian noise of the release's noise multiplier per bin; each release's threshold as the
bundle computes it. Defaults: the shipped chest bundle's unit count and noise multiplier.
"""
from __future__ import annotations

import argparse

import numpy as np

from privmed.privacy import ood


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=281)
    ap.add_argument("--sigma", type=float, default=2.836)
    ap.add_argument("--releases", type=int, default=4000)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)  # a simulation of the mechanism, not a release: a fixed seed is fine
    s = rng.lognormal(np.log(0.88), 0.12, a.units)
    hist = ood.score_rows(s).sum(0)
    out, capped = [], 0
    for _ in range(a.releases):
        h = hist + rng.normal(0, a.sigma, hist.shape)
        t = ood.threshold_from_histogram(h, noise_std=a.sigma)
        med = ood._quantile_from_top(np.where(h > 2 * a.sigma, h, 0.0), 0.5)
        capped += abs(t - ood.MAX_OVER_MEDIAN * med) < 1e-9
        out.append(t)
    empty_above = int((ood.SCORE_EDGES[:-1] > s.max()).sum())
    print(f"{a.units} units, noise multiplier {a.sigma}, {a.releases} releases: {100 * capped / a.releases:.1f} % at "
          f"the cap; median threshold {np.median(out):.3f}; exact 97.5 % quantile {np.quantile(s, 0.975):.3f}; "
          f"{empty_above} empty bins above the largest score")


if __name__ == "__main__":
    main()
