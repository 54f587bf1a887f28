"""Why the from-scratch CNN collapses to one class under DP-SGD: per-sample gradient norms at
initialisation against the clipping norm, by class, and one step's signal against its noise.

    python benchmarks/dp_clipping_bias.py --n 256 --size 64 --max-grad-norm 1.0 --batch-size 256 --epochs 10

When every example's gradient is clipped to the same norm C, each example pulls with the same
force and class weights in the loss are erased; and the noise added to each step is several
times the mean clipped gradient (docs/notebook/BENCHMARKS.md).
"""
import argparse
import math

import numpy as np
import torch
from opacus import GradSampleModule
from torch import nn

from privmed.config import TrainConfig
from privmed.models import get_model
from privmed.privacy import DEFAULT_DELTA, sigma_for
from privmed.training.data import load_pixels, pixels_to_tensor, split_records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=10)
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = TrainConfig(dataset="chest_xray_pneumonia", model="cnn", preprocess={"size": a.size})
    splits = split_records(cfg)
    recs = [splits.train[i] for i in np.random.RandomState(0).choice(len(splits.train), a.n, replace=False)]
    x = pixels_to_tensor(load_pixels(recs, cfg, progress=False))
    y = torch.tensor([r.label for r in recs])
    net = get_model("cnn", len(splits.classes)).trainable.train()
    gsm = GradSampleModule(net, batch_first=True, loss_reduction="mean")
    nn.CrossEntropyLoss()(gsm(x), y).backward()
    flat = torch.cat([p.grad_sample.reshape(len(x), -1) for p in net.parameters()], 1)  # (n, d)
    norms = flat.norm(dim=1)
    print(f"model cnn, {a.size} px, {a.n} random chest X-ray training images, at initialisation (seed 0)")
    for c, name in enumerate(splits.classes):
        v = norms[y == c]
        print(f"{name:10s} n={len(v):4d} per-sample grad norm median {v.median():.2f} "
              f"[min {v.min():.2f}, max {v.max():.2f}], clipped at C={a.max_grad_norm:g}: "
              f"{float((v > a.max_grad_norm).float().mean()):.0%}")
    counts = torch.bincount(torch.tensor([r.label for r in splits.train]))
    print("training images per class:", dict(zip(splits.classes, counts.tolist())))

    # Signal against noise in one DP-SGD step: the mean of the clipped per-sample gradients against the
    # Gaussian noise added to that mean, sigma * C / B per coordinate, over all d parameters.
    clipped = flat * (a.max_grad_norm / norms.clamp(min=a.max_grad_norm)).unsqueeze(1)
    signal = clipped.mean(0)
    d, n = flat.shape[1], len(splits.train)
    steps_per_epoch = math.ceil(n / a.batch_size)
    steps = steps_per_epoch * a.epochs
    print(f"d = {d:,} parameters; one step with batch {a.batch_size}, {a.epochs} epochs ({steps} steps), "
          f"C = {a.max_grad_norm:g}, delta = {DEFAULT_DELTA:g}, PRV accountant:")
    print(f"  signal: norm of the mean clipped gradient {signal.norm():.3f} "
          f"(per coordinate, RMS {signal.norm() / math.sqrt(d):.2e})")
    for eps in (2.0, 8.0, 50.0):
        sigma = sigma_for(eps, DEFAULT_DELTA, 1 / steps_per_epoch, steps)
        per = sigma * a.max_grad_norm / a.batch_size
        print(f"  epsilon {eps:g}: noise multiplier {sigma:.3f}, noise per coordinate {per:.2e}, "
              f"noise norm {per * math.sqrt(d):.3f}")


if __name__ == "__main__":
    main()
