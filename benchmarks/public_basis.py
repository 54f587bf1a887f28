"""Validation accuracy of the DP head with and without a public projection (issue 31, item 1).

    .venv/bin/python benchmarks/public_basis.py --dataset covid19_xray --model effnet_lite0_head \
        --corpus kermany-test --k 0,22 --runs 4 [--out benchmarks/results/public_basis.md]

Each run is the default training (epsilon 2) of ``privmed train`` with ``model_args.public_k=k`` and
``public_data=corpus`` (k 0: no projection); its DP noise is fresh, its seed (initialisation and
validation split) is the run's index, so the k's are compared on the same splits. Only validation is
read; the released weights are the last iterate, so the score is the last epoch's validation accuracy.
Every run spends the dataset's budget in this machine's registry (they are hyperparameter trials).
The noise-to-signal ratio is sigma C sqrt(d) / (q N): d noisy weights ((k + 1) x classes), N the DP
estimate of the training units.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from privmed.config import TrainConfig
from privmed.training.trainer import train


def one_run(dataset: str, model: str, corpus: str, k: int, seed: int) -> dict:
    cfg = TrainConfig(dataset=dataset, model=model, model_args={"public_k": k} if k else {},
                      public_data=corpus if k else None, seed=seed,
                      privacy={"unit": "image"} if dataset == "covid19_ct" else {})
    t = time.time()
    r = train(cfg, progress=False)
    p = r.privacy
    d = (k or r.model.trainable[-1].in_features) + 1
    nsr = p["noise_multiplier"] * p["max_grad_norm"] * math.sqrt(d * len(r.splits.classes)) / (
        p["sample_rate"] * p["n_units_train_dp"])
    return {"k": k, "seed": seed, "val": r.history[-1]["val_accuracy"], "nsr": nsr, "n_val": len(r.splits.val),
            "variance_explained": (r.public or {}).get("variance_explained"), "seconds": time.time() - t}


def table(rows: list[dict], args) -> str:
    out = [f"{args.dataset}, {args.model}, public corpus {args.corpus}, {args.runs} runs per k "
           f"(`{' '.join(args.argv)}`, {time.strftime('%Y-%m-%d')}); validation accuracy of the last iterate",
           "", "| k | runs | validation accuracy mean | sd | min-max | noise-to-signal (run 1) | variance explained |",
           "|---|---|---|---|---|---|---|"]
    for k in args.k:
        rs = [r for r in rows if r["k"] == k]
        v = np.array([r["val"] for r in rs])
        ve = rs[0]["variance_explained"]
        sd = v.std(ddof=1) if len(v) > 1 else 0.0
        out.append(f"| {k or 'none (all features)'} | {len(rs)} | {v.mean():.3f} | {sd:.3f} | {v.min():.3f}-"
                   f"{v.max():.3f} | {rs[0]['nsr']:.2f} | {'-' if ve is None else f'{ve:.2f}'} |")
    base = {r["seed"]: r["val"] for r in rows if r["k"] == 0}
    for k in [k for k in args.k if k and base]:
        diff = [r["val"] - base[r["seed"]] for r in rows if r["k"] == k and r["seed"] in base]
        out.append(f"\nk {k} minus no projection, paired by split: {np.mean(diff):+.3f} "
                   f"({', '.join(f'{d:+.3f}' for d in diff)})")
    return "\n".join(out) + "\n"


def main() -> None:
    import sys

    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", default="effnet_lite0_multi")
    ap.add_argument("--corpus", default="kermany-test")
    ap.add_argument("--k", type=lambda s: [int(v) for v in s.split(",")], default=[0, 64])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.argv = ["python", "benchmarks/public_basis.py", *sys.argv[1:]]
    rows = []
    for seed in range(args.runs):
        for k in args.k:
            rows.append(one_run(args.dataset, args.model, args.corpus, k, seed))
            print(json.dumps(rows[-1]), flush=True)
    text = table(rows, args)
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
