"""Validation-only sweep of the DP head's batch size / learning rate / epochs (epsilon = 2).
Chooses by validation accuracy; the test split is not read.

    python benchmarks/sweep_head.py --dataset brain_tumor_mri
"""
import argparse
import itertools
import json

from privmed.config import TrainConfig
from privmed.training.trainer import train

GRID = {"batch_size": [512, 1024], "lr": [0.05, 0.2], "epochs": [30, 60]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="chest_xray_pneumonia")
    a = ap.parse_args()
    rows = []
    for bs, lr, ep in itertools.product(*GRID.values()):
        res = train(TrainConfig(dataset=a.dataset, batch_size=bs, lr=lr, epochs=ep, patience=ep), progress=False)
        best = max(h["val_accuracy"] for h in res.history)
        rows.append({"batch_size": bs, "lr": lr, "epochs": ep, "val_accuracy": best,
                     "epsilon": res.privacy["epsilon"], "sigma": res.privacy["noise_multiplier"]})
        print(json.dumps(rows[-1]), flush=True)
    print("best:", json.dumps(max(rows, key=lambda r: r["val_accuracy"])))


if __name__ == "__main__":
    main()
