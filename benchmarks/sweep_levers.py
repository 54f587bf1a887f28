"""Validation-only sweep of DP head levers (EMA, epochs, lr, batch size, clip norm) on cached frozen
features, through privmed's own trainer. Scores the released weights (last iterate, or its EMA) on
the validation split; the test split is never read. One JSON line per run.

    python benchmarks/sweep_levers.py --dataset brain_tumor_mri --repeats 2 \
        --config '{}' --config '{"ema": 0.99}' --config '{"privacy.max_grad_norm": 0.5}'

Each --config is a JSON object of TrainConfig overrides on top of the model's defaults; dotted keys
reach nested settings (privacy.max_grad_norm). DP noise is secret, so
repeats differ; the configs alternate within each repeat.
"""
import argparse
import json
import os

import torch

from privmed.config import TrainConfig
from privmed.models.batched import batched_forward
from privmed.training.recipe import set_path
from privmed.training.trainer import train


def make_config(dataset: str, model: str, epsilon: float, overrides: dict) -> TrainConfig:
    data = {"dataset": dataset, "model": model, "privacy": {"epsilon": epsilon}}
    for key, value in overrides.items():
        set_path(data, key, json.dumps(value))  # the CLI's --set rule for dotted keys
    cfg = TrainConfig(**data)
    cfg.patience = cfg.epochs  # no early stop (DP releases the last iterate anyway)
    return cfg


def run(cfg: TrainConfig) -> dict:
    res = train(cfg, progress=False)
    y = torch.tensor([r.label for r in res.splits.val])
    pred = batched_forward(res.model.trainable.eval(), res.val_inputs, 512).argmax(1)
    k = len(res.splits.classes)
    recall = [float((pred[y == c] == c).float().mean()) for c in range(k) if (y == c).any()]
    p = res.privacy or {}  # none without DP (a non-private reference)
    return {"val_accuracy": round(float((pred == y).float().mean()), 4),
            "val_balanced_accuracy": round(sum(recall) / len(recall), 4),
            "last_epoch_val_accuracy_raw": res.history[-1]["val_accuracy"],  # before EMA
            "epsilon": p.get("epsilon"), "delta": p.get("delta"), "sigma": p.get("noise_multiplier"),
            "q": p.get("sample_rate"), "steps": p.get("steps"), "clip": p.get("max_grad_norm"),
            "accountant": p.get("accountant"), "unit": p.get("unit_of_privacy"),
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "ema": cfg.ema,
            "n_train_images": len(res.splits.train),
            "seconds": round(res.seconds, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="brain_tumor_mri")
    ap.add_argument("--model", default="effnet_lite0_multi")
    ap.add_argument("--epsilon", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--config", action="append", default=None, help="JSON object of overrides")
    a = ap.parse_args()
    configs = [json.loads(text) for text in a.config or ["{}"]]
    for rep in range(a.repeats):  # configs alternate, so a change in machine load hits them alike
        for overrides in configs:
            row = run(make_config(a.dataset, a.model, a.epsilon, overrides))
            print(json.dumps({"dataset": a.dataset, "config": overrides, "repeat": rep, **row,
                              "load": round(os.getloadavg()[0], 1)}), flush=True)


if __name__ == "__main__":
    main()
