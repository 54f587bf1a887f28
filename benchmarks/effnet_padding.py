"""How much the TF "same" padding fix of the EfficientNet-Lite0 backbone changes its output, and
whether it changes what a linear probe on the frozen features can do (issue 9, item 1).

    python benchmarks/effnet_padding.py --old-ref f65de22 --probe-train 1000

OLD is ``src/privmed/models/efficientnet_lite.py`` at git revision ``--old-ref`` (symmetric padding
of the stride-2 convs, mean/std 0.498/0.502), NEW is the installed one. Both load the same ImageNet
weights. Reported:

* relative L2 difference ||old - new|| / ||new|| (over the whole batch) of the pooled 1280-d
  features and of the ImageNet logits on 8 chest X-rays of the official test split (4 per class),
  read by privmed's own pipeline; also each against the reference loader
  (``efficientnet-lite-pytorch``) when it is installed;
* a non-private logistic-regression probe (L2, C = 1 on standardised features, fitted with L-BFGS;
  the objective of scikit-learn's default LogisticRegression) on the pooled features of
  ``--probe-train`` training images (stratified random subset, ``--seed``), AUC on the 624 official test
  images. ``--probe-train 0`` skips it.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from privmed.config import REPO_ROOT, TrainConfig
from privmed.data.datasets import open_dataset
from privmed.evaluation.metrics import roc_auc
from privmed.models import efficientnet_lite as new_effl
from privmed.training.data import load_pixels, pixels_to_tensor

FILE = "src/privmed/models/efficientnet_lite.py"


def old_module(ref: str):
    src = subprocess.run(["git", "show", f"{ref}:{FILE}"], cwd=REPO_ROOT, check=True, capture_output=True,
                         text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_efficientnet_lite.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_efficientnet_lite", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def pooled_and_logits(model, x: torch.Tensor, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    feats = torch.cat([model.features(x[i:i + batch]) for i in range(0, len(x), batch)])
    return feats, model._fc(feats)


def probe_auc(f_tr: np.ndarray, y_tr: np.ndarray, f_te: np.ndarray, y_te: np.ndarray, c: float = 1.0) -> float:
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-6
    xtr = torch.tensor((f_tr - mu) / sd, dtype=torch.float64)
    xte = torch.tensor((f_te - mu) / sd, dtype=torch.float64)
    y = torch.tensor(y_tr, dtype=torch.float64)
    w = torch.zeros(xtr.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = 0.5 * (w @ w) + c * torch.nn.functional.binary_cross_entropy_with_logits(xtr @ w + b, y,
                                                                                          reduction="sum")
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return roc_auc(y_te, (xte @ w + b).numpy())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-ref", default="f65de22", help="git revision holding the old implementation")
    ap.add_argument("--probe-train", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="seed of the probe's training subset")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    old_effl = old_module(a.old_ref)
    old, new = old_effl.pretrained_lite0(), new_effl.pretrained_lite0()

    cfg = TrainConfig(dataset="chest_xray_pneumonia", model="effnet_lite0_head")
    ds = open_dataset(cfg.dataset, cfg.data_root)
    test = ds.records("test")
    pick = [r for label in range(len(ds.classes)) for r in [t for t in test if t.label == label][:4]]
    x8 = pixels_to_tensor(load_pixels(pick, cfg, progress=False))
    f_old, l_old = pooled_and_logits(old, x8)
    f_new, l_new = pooled_and_logits(new, x8)
    print(f"8 chest X-rays ({', '.join(ds.classes)}: 4 each, official test split)")
    print(f"  old vs new: pooled features rel L2 {rel(f_old, f_new):.3f}, "
          f"ImageNet logits rel L2 {rel(l_old, l_new):.3f}")
    saved = old_effl.MEAN, old_effl.STD  # the padding alone: old code with the new (exact) normalisation
    old_effl.MEAN, old_effl.STD = new_effl.MEAN, new_effl.STD
    f_pad, l_pad = pooled_and_logits(old, x8)
    old_effl.MEAN, old_effl.STD = saved
    print(f"  of which padding alone (old code, new mean/std): features {rel(f_pad, f_new):.3f}, "
          f"logits {rel(l_pad, l_new):.3f}")
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        print("  (reference package efficientnet-lite-pytorch not installed: no comparison with it)")
    else:
        ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(new_effl.weights_path())).eval()
        with torch.no_grad():
            xr = (x8.expand(-1, 3, -1, -1) - new_effl.MEAN) / new_effl.STD
            f_ref, l_ref = ref.extract_features(xr).mean((2, 3)), ref(xr)
        for name, f, lg in (("old", f_old, l_old), ("new", f_new, l_new)):
            print(f"  {name} vs reference: pooled features rel L2 {rel(f, f_ref):.2e}, "
                  f"logits rel L2 {rel(lg, l_ref):.2e}, "
                  f"logits max abs diff {float((lg - l_ref).abs().max()):.2e}")

    if a.probe_train <= 0:
        return
    train = ds.records("train")
    labels = np.array([r.label for r in train])
    rng = np.random.RandomState(a.seed)
    idx = []
    for label in np.unique(labels):  # stratified: class proportions of the training split
        members = np.flatnonzero(labels == label)
        idx += list(rng.choice(members, round(a.probe_train * len(members) / len(train)), replace=False))
    tr = [train[i] for i in sorted(idx)]
    t0 = time.time()
    x_tr = pixels_to_tensor(load_pixels(tr, cfg, progress=False))
    x_te = pixels_to_tensor(load_pixels(test, cfg, progress=False))
    y_tr, y_te = np.array([r.label for r in tr]), np.array([r.label for r in test])
    print(f"\nlinear probe: {len(tr)} training images (stratified, seed {a.seed}) -> {len(test)} test images; "
          f"positive class '{ds.classes[1]}'")
    for name, model in (("old", old), ("new", new)):
        f_tr = pooled_and_logits(model, x_tr)[0].numpy()
        f_te = pooled_and_logits(model, x_te)[0].numpy()
        print(f"  {name}: test AUC {probe_auc(f_tr, y_tr, f_te, y_te):.4f}")
    print(f"  ({time.time() - t0:.0f} s, {a.threads} thread(s))")


if __name__ == "__main__":
    sys.exit(main())
