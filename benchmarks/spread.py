"""Run-to-run spread of a default recipe on its test split (issue 31, item 2).

    .venv/bin/python benchmarks/spread.py --dataset chest_xray_pneumonia --runs 5 \
        [--set KEY=VALUE ...] [--bundle bundles/chest_xray_pneumonia] [--out benchmarks/results/spread.md]

Trains the recipe ``--runs`` times (``pipeline.train_bundle``, the code ``privmed train`` runs; fresh
secret noise each time, seed 0 as the default command) into runs/spread/<dataset>-<i> and evaluates each
once on the test split (leaked copies removed, as ``privmed evaluate``). ``--bundle``: count an already
trained bundle of the same recipe as one of the runs (the shipped one), so its number is not re-drawn.
Nothing is selected: the test split is read once per run of the one adopted recipe. Every run spends the
dataset's budget in this machine's registry.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from privmed.config import TrainConfig
from privmed.evaluation.evaluate import evaluate
from privmed.pipeline import train_bundle
from privmed.training.recipe import set_path  # the CLI's own --set KEY=VALUE rule

ROOT = Path(__file__).resolve().parent.parent


def row(bundle: Path) -> dict:
    r = evaluate(bundle, progress=False)
    from privmed.bundle.format import read_metadata

    dec = read_metadata(bundle).decision
    return {"bundle": str(bundle), "accuracy": r["accuracy"], "auc": r["auc"], "n": r["n"],
            "sensitivity": r.get("sensitivity"), "specificity": r.get("specificity"),
            "threshold_margin": dec.threshold_margin if dec else None}


def table(rows: list[dict], args) -> str:
    acc = np.array([r["accuracy"] for r in rows])
    auc = np.array([r["auc"] for r in rows])
    two = rows[0]["specificity"] is not None
    out = [f"{args.dataset}, {len(rows)} runs of one recipe (`{' '.join(args.argv)}`, {time.strftime('%Y-%m-%d')}), "
           f"test split n = {rows[0]['n']}", "",
           "| run | accuracy | AUC |" + (" sensitivity | specificity | threshold margin |" if two else ""),
           "|---|---|---|" + ("---|---|---|" if two else "")]
    for i, r in enumerate(rows):
        extra = (f" {r['sensitivity']:.3f} | {r['specificity']:.3f} | {r['threshold_margin']:+.2f} |" if two else "")
        out.append(f"| {Path(r['bundle']).name} | {r['accuracy']:.3f} | {r['auc']:.3f} |" + extra)
    out.append(f"\naccuracy mean {acc.mean():.3f}, range {acc.min():.3f}-{acc.max():.3f} "
               f"(spread {100 * (acc.max() - acc.min()):.1f} points), sd {acc.std(ddof=1):.3f}; "
               f"AUC mean {auc.mean():.3f}, range {auc.min():.3f}-{auc.max():.3f}")
    return "\n".join(out) + "\n"


def main() -> None:
    import sys

    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--bundle", type=Path, help="an already trained run of the same recipe, counted as run 1")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.argv = ["python", "benchmarks/spread.py", *sys.argv[1:]]
    over: dict = {"dataset": args.dataset, **({"model": args.model} if args.model else {})}
    for item in args.set:
        set_path(over, *item.split("=", 1))
    rows = [row(args.bundle)] if args.bundle else []
    for i in range(len(rows), args.runs):
        out = ROOT / "runs" / "spread" / f"{args.dataset}-{i}"
        train_bundle(TrainConfig(**over), out, progress=False)
        rows.append(row(out))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows, args)
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
