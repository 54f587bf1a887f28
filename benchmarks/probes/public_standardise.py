"""Brain/CT probe: the DP head on features standardised per coordinate by a *public* corpus's statistics.

    python benchmarks/probes/public_standardise.py --dataset brain_tumor_mri --corpus kermany-test --runs 2

Each run is privmed's default training (epsilon 2), with and without a public projection whose mean is the
corpus's feature mean and whose (d x d, diagonal) basis is 1 / sd per coordinate (sd floored at ``--floor``
times its median), scaled by one public factor as ``training.public`` does. The corpus is another
modality's declared public split (its own dataset's split is refused), so the projection spends no epsilon.
Validation accuracy of the last iterate; seeds pair the two arms on the same split.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import privmed.training.trainer as trainer
from privmed.config import TrainConfig
from privmed.data.public import public_corpus
from privmed.models.registry import LiteMulti, public_basis
from privmed.training.data import load_pixels, model_inputs


def standardiser(floor: float):
    def fit(model, cfg, progress=False):
        proj = public_basis(model.trainable)
        if proj is None:
            return None
        corpus = public_corpus(cfg.public_data, cfg.dataset, cfg.data_root)
        h = model_inputs(model, load_pixels(corpus.records, cfg, progress), progress).double()
        mean, sd = h.mean(0), h.std(0)
        basis = torch.diag(1.0 / sd.clamp_min(floor * sd.median()))
        scale = h.pow(2).sum(1).mean().sqrt() / ((h - mean) @ basis).pow(2).sum(1).mean().sqrt()
        proj.mean.copy_(mean.float())
        proj.basis.copy_((basis * scale).float())
        return {**corpus.describe(), "scale": round(float(scale), 4)}
    return fit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--floor", type=float, default=0.5)
    a = ap.parse_args()
    trainer.fit_public_basis = standardiser(a.floor)  # the one step this probe changes
    unit = {"unit": "image"} if a.dataset == "covid19_ct" else {}
    for seed in range(a.runs):
        for arm in ("none", "standardised"):
            extra = {} if arm == "none" else {"model_args": {"public_k": LiteMulti.DIMS}, "public_data": a.corpus}
            t = time.time()
            r = trainer.train(TrainConfig(dataset=a.dataset, model="effnet_lite0_multi", seed=seed, privacy=unit,
                                          **extra), progress=False)
            print(json.dumps({"arm": arm, "corpus": a.corpus, "floor": a.floor, "seed": seed,
                              "val": round(r.history[-1]["val_accuracy"], 4), "s": round(time.time() - t, 1)}),
                  flush=True)


if __name__ == "__main__":
    main()
