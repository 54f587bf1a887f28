"""How far the DP linear head sits from what its frozen features allow, per dataset:

1. ``logistic``: a non-private logistic regression on the same cached features (scikit-learn,
   balanced class weights, C chosen on validation): the ceiling of any linear head;
2. ``dp_recipe_no_noise``: privmed's DP recipe replayed through its own engine and ``fit`` with the
   noise switched off (per-unit clipping to C, Poisson sampling of units, same steps and learning
   rate, exact class weights): what the recipe's optimisation alone reaches;
3. ``dp``: the recipe itself (``privmed.training.train``, secret noise, epsilon as configured).

Validation decides; test is printed so the gaps can be stated, never to choose a setting.
Nothing here is released. One JSON line per row.

    python benchmarks/head_ceilings.py --dataset brain_tumor_mri --repeats 2
"""
import argparse
import json
import time

import numpy as np
import torch

from privmed.config import TrainConfig
from privmed.evaluation.metrics import classification_report
from privmed.models import get_model
from privmed.models.batched import batched_forward
from privmed.privacy import DPPlan
from privmed.training.data import load_pixels, model_inputs, split_records, test_records, unit_ids
from privmed.training.trainer import count_weights, fit, train


class _NoNoise(DPPlan):
    def epsilon_after(self, steps: int) -> float:
        return float("inf")  # noise off: no guarantee, and the accountant would divide by zero


def _scores(prob: np.ndarray, y: np.ndarray, split: str) -> dict:
    """Argmax accuracy and AUC by privmed's own report (binary, or the mean of one-vs-rest)."""
    rep = classification_report(y, prob, [str(c) for c in range(prob.shape[1])])
    return {f"{split}_accuracy": round(rep["accuracy"], 4), f"{split}_auc": round(rep["auc"], 4)}


def _net_scores(net, x, y, split: str) -> dict:
    return _scores(torch.softmax(batched_forward(net.eval(), x, 512), 1).numpy(), y.numpy(), split)


def logistic(x_tr, y_tr, x_va, y_va, x_te, y_te) -> dict:
    from sklearn.linear_model import LogisticRegression

    best = None
    for c in (0.3, 1, 3, 10, 30, 100):
        m = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(x_tr, y_tr)
        va = float((m.predict(x_va) == y_va).mean())
        if best is None or va > best[0]:
            best = (va, c, m)
    m = best[2]
    return {"C": best[1], **_scores(m.predict_proba(x_va), y_va, "val"), **_scores(m.predict_proba(x_te), y_te, "test")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="brain_tumor_mri")
    ap.add_argument("--model", default="effnet_lite0_multi")
    ap.add_argument("--unit", default="auto")
    ap.add_argument("--repeats", type=int, default=1, help="DP runs (their noise differs)")
    a = ap.parse_args()
    cfg = TrainConfig(dataset=a.dataset, model=a.model, privacy={"unit": a.unit})
    splits = split_records(cfg)
    test, _ = test_records(cfg)
    model = get_model(cfg.model, len(splits.classes))
    x_tr, x_va, x_te = (model_inputs(model, load_pixels(r, cfg, False), False)
                        for r in (splits.train, splits.val, test))
    y_tr, y_va, y_te = (torch.tensor([r.label for r in recs]) for recs in (splits.train, splits.val, test))
    units, unit = unit_ids(splits.train, cfg.privacy.unit)
    n_units = int(units.max()) + 1
    head = {"dataset": a.dataset, "model": a.model, "unit": unit, "n_units": n_units, "n_train": len(y_tr),
            "n_val": len(y_va), "n_test": len(y_te)}

    t0 = time.time()
    row = logistic(x_tr.numpy(), y_tr.numpy(), x_va.numpy(), y_va.numpy(), x_te.numpy(), y_te.numpy())
    print(json.dumps({**head, "row": "logistic", **row, "seconds": round(time.time() - t0, 1)}), flush=True)

    t0 = time.time()
    q = cfg.privacy.sample_rate  # the DP recipe's public rate and steps
    plan = _NoNoise.with_noise(0.0, q, cfg.privacy.max_grad_norm, n_units, round(1 / q) * cfg.epochs)
    net = fit(get_model(cfg.model, len(splits.classes)).trainable, x_tr, y_tr, cfg, units,
              count_weights(y_tr, len(splits.classes)), plan).net
    print(json.dumps({**head, "row": "dp_recipe_no_noise", **_net_scores(net, x_va, y_va, "val"),
                      **_net_scores(net, x_te, y_te, "test"), "q": plan.sample_rate, "steps": plan.planned_steps,
                      "clip": plan.max_grad_norm, "lr": cfg.lr, "epochs": cfg.epochs,
                      "seconds": round(time.time() - t0, 1)}), flush=True)

    for rep in range(a.repeats):
        res = train(cfg, progress=False)
        p = res.privacy
        print(json.dumps({**head, "row": "dp", "repeat": rep, **_net_scores(res.model.trainable, x_va, y_va, "val"),
                          **_net_scores(res.model.trainable, x_te, y_te, "test"), "epsilon": p["epsilon"],
                          "delta": p["delta"], "sigma": p["noise_multiplier"], "q": p["sample_rate"],
                          "steps": p["steps"], "clip": p["max_grad_norm"], "accountant": p["accountant"],
                          "seconds": round(res.seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
