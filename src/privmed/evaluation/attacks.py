"""Membership-inference attacks and ROC utilities.

* ``loss_scores``: the loss-threshold attack (Yeom et al. 2018): a low loss says "member".
* ``lira_offline_scores``: offline LiRA (Carlini et al. 2022): per example, the logit-scaled
  confidence phi = log(p_y / (1 - p_y)) under the audited model is compared with its
  distribution under K reference models that never saw the example (OUT models); score =
  how far phi sits above that Gaussian, in standard deviations.
* ``train_reference``: reference models trained by the trainer's own loop with the audited
  bundle's recipe (optimizer, learning rate, class weights, epochs, EMA, augmentation, and DP-SGD
  with the same noise multiplier, clipping norm and sample rate) on data disjoint from the
  audited examples.
* ROC helpers: ``roc_curve``, ``tpr_at_fpr`` (no interpolation: the best TPR among thresholds
  whose FPR does not exceed the target), ``downsample_roc`` (log-spaced in FPR so the low-FPR
  region that matters survives).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from privmed.config import TrainConfig
from privmed.evaluation.dp_bounds import auc_confidence_interval
from privmed.evaluation.metrics import roc_auc
from privmed.models.batched import batched_forward
from privmed.privacy import DPPlan
from privmed.training.trainer import count_weights, fit

__all__ = ["roc_auc", "roc_curve", "tpr_at_fpr", "downsample_roc", "logit_confidence", "ce_loss",
           "loss_scores", "lira_offline_scores", "Recipe", "dp_numbers", "train_reference", "attack_summary"]


# --------------------------------------------------------------------------- ROC

def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, from (0, 0) to (1, 1); "member" means
    score >= threshold. Ties are kept together (no optimistic splitting). ``sklearn.metrics.roc_curve``
    with every point kept."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    y = np.asarray(labels).astype(bool)
    if y.all() or (~y).all():
        raise ValueError("ROC needs both members and non-members")
    fpr, tpr, thr = sk_roc_curve(y, np.asarray(scores, dtype=float), drop_intermediate=False)
    thr[0] = np.inf  # (0, 0): nothing is called a member
    return fpr, tpr, thr


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR among operating points with FPR <= target. With n non-members an FPR below
    1/n can only be reached at FPR = 0, so small samples report conservatively."""
    ok = np.asarray(fpr) <= target + 1e-12
    return float(np.max(np.asarray(tpr)[ok])) if ok.any() else 0.0


def downsample_roc(fpr: np.ndarray, tpr: np.ndarray, points: int = 120) -> dict:
    """At most ~``points`` ROC points, log-spaced in FPR from 1e-4 (keeps the low-FPR part);
    each kept point is a real operating point (the best TPR at or below that FPR)."""
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    grid = np.unique(np.r_[0.0, np.logspace(-4, 0, points - 1)])
    out_f, out_t = [], []
    for g in grid:
        ok = fpr <= g + 1e-12
        if ok.any():
            i = np.nonzero(ok)[0][np.argmax(tpr[ok])]
            out_f.append(float(fpr[i]))
            out_t.append(float(tpr[i]))
    pairs = sorted(set(zip(out_f, out_t)))
    return {"fpr": [round(p[0], 6) for p in pairs], "tpr": [round(p[1], 6) for p in pairs]}


def attack_summary(member_scores, nonmember_scores, fprs=(0.001, 0.01), roc_points: int = 120) -> dict:
    """AUC, TPR at the given FPRs and a downsampled ROC for one attack."""
    pos, neg = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    scores = np.r_[pos, neg]
    fpr, tpr, _ = roc_curve(labels, scores)
    auc = roc_auc(labels, scores)
    lo, hi = auc_confidence_interval(auc, len(pos), len(neg))
    return {"auc": auc, "auc_ci95": [lo, hi], "n_members": int(len(pos)), "n_nonmembers": int(len(neg)),
            "tpr_at_fpr": {str(f): tpr_at_fpr(fpr, tpr, f) for f in fprs},
            "min_resolvable_fpr": 1.0 / len(neg), "roc": downsample_roc(fpr, tpr, roc_points)}


# --------------------------------------------------------------------------- scores

def logit_confidence(logits: torch.Tensor | np.ndarray, labels) -> np.ndarray:
    """phi = log p_y - log(1 - p_y) = z_y - logsumexp_{j != y} z_j (stable for any margin)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    zy = z.gather(1, y[:, None])[:, 0]
    others = z.clone()
    others.scatter_(1, y[:, None], -math.inf)
    return (zy - torch.logsumexp(others, 1)).numpy()


def ce_loss(logits, labels) -> np.ndarray:
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return nn.functional.cross_entropy(z, y, reduction="none").numpy()


def loss_scores(logits, labels) -> np.ndarray:
    """Loss-threshold attack score: -loss (higher = more likely a member)."""
    return -ce_loss(logits, labels)


def lira_offline_scores(target_phi: np.ndarray, ref_phi: np.ndarray, fixed_variance: bool = True) -> np.ndarray:
    """Offline LiRA. ``ref_phi`` is (K, N): phi of each example under K OUT reference models.

    Score = (phi - mu_out) / sigma_out; with few references the variance is pooled over all
    examples ("fixed variance", recommended by Carlini et al. for small K)."""
    ref_phi = np.atleast_2d(np.asarray(ref_phi, float))
    mu = ref_phi.mean(0)
    if fixed_variance or ref_phi.shape[0] < 2:
        sd = np.full_like(mu, np.std(ref_phi - mu, ddof=1 if ref_phi.shape[0] > 1 else 0) if ref_phi.size > 1 else 1.0)
    else:
        sd = ref_phi.std(0, ddof=1)
    sd = np.maximum(sd, 1e-6)
    return (np.asarray(target_phi, float) - mu) / sd


# --------------------------------------------------------------------------- reference models

def dp_numbers(p: dict) -> dict:
    """A bundle's privacy block with its DP-SGD numbers at the top. A federated ledger keeps them per
    hospital: references then repeat hospital 1's local DP-SGD (its noise multiplier, sample rate and
    steps) centrally on the reference pool, the nearest one-site recipe (FedSGD with server momentum
    is exactly that recipe, with sqrt(hospitals) more noise in the aggregate than each reference sees)."""
    if p.get("noise_multiplier") is not None or not p.get("hospitals"):
        return p
    h = p["hospitals"][0]
    q, steps = h["sample_rate"], h["steps"]
    return {**p, "noise_multiplier": h["noise_multiplier"], "sample_rate": q, "steps": steps,
            "epochs": math.ceil(steps / max(1, round(1 / q)))}


@dataclass
class Recipe:
    """How the audited model was trained: what a reference model must repeat."""
    epochs: int
    lr: float
    batch_size: int
    class_weights: list[float] | None
    dp: bool
    optimizer: str = "adam"
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    sample_rate: float | None = None  # DP: Poisson rate q (the bundle's); expected batch = q * n
    steps: int | None = None          # DP: the bundle's steps (default: epochs x 1/q)
    augment: dict | None = None       # pixel models: the bundle's augmentation settings
    balance: bool = False             # non-DP: class weights from the data's own counts (the trainer's rule)
    ema: float = 0.0
    grad_sample_mode: str = "hooks"   # Opacus per-sample gradient mode (same clipped sums, other speed)

    def config(self, seed: int) -> TrainConfig:
        """The trainer settings ``fit`` reads for this recipe."""
        return TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, optimizer=self.optimizer,
                           ema=self.ema, seed=seed, augment=self.augment or {"enabled": False},
                           privacy={"enabled": self.dp, "max_grad_norm": self.max_grad_norm,
                                    "grad_sample_mode": self.grad_sample_mode})

    @classmethod
    def from_metadata(cls, meta: dict) -> "Recipe":
        t, p = meta["training"], dp_numbers(meta.get("privacy") or {})
        dp = bool((t.get("privacy") or {}).get("enabled")) and p.get("noise_multiplier") is not None
        epochs = int(p.get("epochs") or meta.get("best_epoch") or t["epochs"])
        aug = t.get("augment") if (t.get("augment") or {}).get("enabled") else None
        weights = (p.get("class_weights") or {}).get("weights") if dp else None
        return cls(epochs=epochs, lr=float(t["lr"]), batch_size=int(t["batch_size"]), class_weights=weights, dp=dp,
                   optimizer=t.get("optimizer", "adam"), noise_multiplier=float(p.get("noise_multiplier") or 0.0),
                   max_grad_norm=float(p.get("max_grad_norm") or (t.get("privacy") or {}).get("max_grad_norm", 1.0)),
                   sample_rate=float(p["sample_rate"]) if dp else None, augment=aug,
                   steps=int(p["steps"]) if dp and p.get("steps") else None,
                   balance=not dp and bool(t.get("class_weights")), ema=float(t.get("ema") or 0.0),
                   grad_sample_mode=(t.get("privacy") or {}).get("grad_sample_mode", "hooks"))


def train_reference(build, x: torch.Tensor, y: torch.Tensor, num_classes: int, recipe: Recipe, seed: int,
                    augment: bool = False, units: torch.Tensor | None = None) -> nn.Module:
    """Train one reference ``trainable`` module (fresh from ``build()``) on (x, y) with ``recipe``
    through the trainer's own loop (``privmed.training.trainer.fit``): under DP its DP-SGD engine
    with the bundle's noise multiplier, clipping norm, sample rate and public class weights (one
    image per unit unless ``units`` says otherwise); without DP its batch rule and class weights
    from the reference data's own counts. ``augment``: x are pixels (the recipe's augmentation).
    No validation, so no early stopping: ``recipe.epochs`` epochs."""
    torch.manual_seed(seed)
    net = build()
    units = torch.arange(len(x)) if units is None else units
    weight = (torch.tensor(recipe.class_weights, dtype=torch.float32) if recipe.class_weights
              else count_weights(y, num_classes) if recipe.balance else torch.ones(num_classes))
    plan = None
    if recipe.dp:
        plan = DPPlan.with_noise(recipe.noise_multiplier, recipe.sample_rate, recipe.max_grad_norm,
                                 int(units.max()) + 1,
                                 recipe.steps or max(1, round(1 / recipe.sample_rate)) * recipe.epochs)
    threads = torch.get_num_threads()
    if sum(p.numel() for p in net.parameters()) < 50_000:
        torch.set_num_threads(1)  # a linear head: thread sync costs more than it saves (and 2 shared cores)
    try:
        return fit(net, x, y, recipe.config(seed), units, weight, plan, pixels=augment).net
    finally:
        torch.set_num_threads(threads)


def logits_of(net: nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Logits of a trainable module (eval mode, batched)."""
    net.eval()
    return batched_forward(net, x, batch) if len(x) else torch.empty(0)
