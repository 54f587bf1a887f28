"""Brain probe: a strongly convex softmax head released once by output perturbation, against DP-SGD.

    python benchmarks/probes/output_perturbation.py --dataset brain_tumor_mri --epsilon 1.9 --lam 10,30,100,300,1000

Minimise sum_i CE(W x_i) + lam/2 ||W||^2 (x = the cached multi-tap features plus a constant 1, norm <= R)
to convergence (L-BFGS, float64), then add Gaussian noise. One unit added or removed moves the exact
minimiser by at most L / lam, L = sqrt(2) R the loss's Lipschitz constant (strong convexity; Chaudhuri et
al. 2011); the noise multiplier is the analytic Gaussian mechanism's for (epsilon, 1e-5) (Balle & Wang
2018). A probe, not a release: the minimiser is approximate (the printed gradient norm bounds the gap),
the class counts and validation releases of a real bundle are not composed in, and the noise here is
seeded. Validation accuracy, exact and over ten noise draws.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from scipy.stats import norm

from privmed.config import TrainConfig
from privmed.models.registry import get_model
from privmed.training.data import load_pixels, model_inputs, split_records


def features(dataset: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = TrainConfig(dataset=dataset, model="effnet_lite0_multi")
    splits = split_records(cfg)
    model = get_model(cfg.model, len(splits.classes))
    out = []
    for recs in (splits.train, splits.val):
        x = model_inputs(model, load_pixels(recs, cfg, False), False).double()
        out += [torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1), torch.tensor([r.label for r in recs])]
    return tuple(out)


def minimise(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    w = torch.zeros(x.shape[1], int(y.max()) + 1, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        f = torch.nn.functional.cross_entropy(x @ w, y, reduction="sum") + lam / 2 * w.pow(2).sum()
        f.backward()
        return f
    opt.step(closure)
    return w.detach(), float(w.grad.norm())


def gaussian_epsilon(m: float, delta: float) -> float:
    """Smallest epsilon of the Gaussian mechanism with noise multiplier m at delta (analytic)."""
    lo, hi = 1e-4, 100.0
    for _ in range(100):
        e = (lo + hi) / 2
        d = norm.cdf(0.5 / m - e * m) - math.exp(e) * norm.cdf(-0.5 / m - e * m)
        lo, hi = (e, hi) if d > delta else (lo, e)
    return hi


def multiplier(epsilon: float, delta: float) -> float:
    lo, hi = 0.05, 100.0
    for _ in range(100):
        m = (lo + hi) / 2
        lo, hi = (m, hi) if gaussian_epsilon(m, delta) > epsilon else (lo, m)
    return hi


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="brain_tumor_mri")
    ap.add_argument("--epsilon", type=float, default=1.9)
    ap.add_argument("--lam", default="10,30,100,300,1000")
    a = ap.parse_args()
    xtr, ytr, xva, yva = features(a.dataset)
    lip = math.sqrt(2) * float(xtr.norm(dim=1).max())
    m = multiplier(a.epsilon, 1e-5)
    print(f"{a.dataset}: R {lip / math.sqrt(2):.3f}, L {lip:.3f}, noise multiplier {m:.3f} for epsilon {a.epsilon}")
    gen = torch.Generator().manual_seed(0)

    def acc(w, x, y):
        return float(((x @ w).argmax(1) == y).double().mean())
    for lam in [float(v) for v in a.lam.split(",")]:
        w, g = minimise(xtr, ytr, lam)
        sd = m * lip / lam
        noisy = [acc(w + sd * torch.randn(w.shape, generator=gen, dtype=w.dtype), xva, yva) for _ in range(10)]
        print(f"lambda {lam:g}: gradient norm {g:.1e}, noise sd {sd:.4f} per weight, train {acc(w, xtr, ytr):.3f}, "
              f"validation exact {acc(w, xva, yva):.3f}, noisy mean {np.mean(noisy):.3f} "
              f"({np.min(noisy):.3f}-{np.max(noisy):.3f})", flush=True)


if __name__ == "__main__":
    main()
