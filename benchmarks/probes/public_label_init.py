"""COVID-19 X-ray probe: the DP head started from a head fitted on the public corpus's own labels.

    python benchmarks/probes/public_label_init.py --runs 6 --gain 0 --gain 1 --gain 0.3 --gain 0.1

The shipped recipe (``effnet_lite0_head``, public projection k 22 on ``kermany-test``, epsilon 2), except
that before DP-SGD the head's rows for *normal* and *viral_pneumonia* are set to ``gain`` times those of a
logistic regression fitted on the projected public films (normal / bacterial / viral, from Kermany's file
names); the *covid* row starts at zero. Gain 0 is the shipped start. Depends on public images and labels
only, so it spends no epsilon. Validation accuracy of the last iterate (about 20-30 validation images per split).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

import privmed.training.trainer as trainer
from privmed.config import TrainConfig
from privmed.data.public import public_corpus
from privmed.models.registry import public_basis
from privmed.training.data import load_pixels, model_inputs

ORIGINAL = trainer.fit_public_basis


def with_public_start(gain: float):
    def fit(model, cfg, progress=False):
        out = ORIGINAL(model, cfg, progress)
        if not gain:
            return out
        corpus = public_corpus(cfg.public_data, cfg.dataset, cfg.data_root)
        with torch.no_grad():
            z = public_basis(model.trainable)(model_inputs(model, load_pixels(corpus.records, cfg), False))
        kind = [0 if r.label == 0 else 2 if "virus" in r.path.name else 1 for r in corpus.records]
        clf = LogisticRegression(C=1.0, max_iter=5000).fit(z.double().numpy(), np.array(kind))
        lin = model.trainable[-1]
        with torch.no_grad():
            lin.weight.zero_()
            lin.bias.zero_()
            for dst, src in ((1, 0), (2, 2)):  # covid19_xray: covid 0, normal 1, viral_pneumonia 2
                lin.weight[dst] = torch.tensor(clf.coef_[src] * gain)
                lin.bias[dst] = float(clf.intercept_[src] * gain)
        return out
    return fit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--gain", type=float, action="append")
    a = ap.parse_args()
    for seed in range(a.runs):
        for gain in a.gain or [0.0, 1.0]:
            trainer.fit_public_basis = with_public_start(gain)
            cfg = TrainConfig(dataset="covid19_xray", model="effnet_lite0_head", model_args={"public_k": 22},
                              public_data="kermany-test", seed=seed)
            r = trainer.train(cfg, progress=False)
            print(json.dumps({"gain": gain, "seed": seed, "val": round(r.history[-1]["val_accuracy"], 3)}),
                  flush=True)


if __name__ == "__main__":
    main()
