"""COVID-19 X-ray probe: are the declared public films worth training on? (validation only)

    python benchmarks/probes/public_rows.py --runs 12 [--first-seed 0]

The shipped recipe (``effnet_lite0_head``, public projection k 22 on ``kermany-test``, epsilon 2), with and
without the corpus's normal and viral-pneumonia films added to the training rows under covid19_xray's
labels (normal -> normal, ``virus`` in the file name -> viral_pneumonia; bacterial films left out), each as
its own unit. Here they are clipped and noised like the private rows, which a public row does not need, so
this bounds from below what training on them in the clear would give. The privacy of the private rows is
unchanged (one of them still moves the clipped sum by at most C); the DP class counts and the unit
estimate include the public rows, which a built version would leave out. Each run is recorded against
covid19_xray's budget (the registry would otherwise key it by the mixed rows). Validation accuracy of the
last iterate; the two arms share each seed's split.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import privmed.training.trainer as trainer
from privmed.config import TrainConfig
from privmed.data.public import public_corpus

ORIGINAL = trainer.split_records
ORIGINAL_KEY = trainer.key_of


def with_public_rows(cfg: TrainConfig):
    splits = ORIGINAL(cfg)
    trainer.key_of = lambda _: ORIGINAL_KEY(splits)  # the runs spend covid19_xray's budget, not a mixed key
    corpus = public_corpus("kermany-test", cfg.dataset, cfg.data_root)
    normal, viral = splits.classes.index("normal"), splits.classes.index("viral_pneumonia")
    rows = [dataclasses.replace(r, label=normal if r.label == 0 else viral, patient_id=None)
            for r in corpus.records if r.label == 0 or "virus" in r.path.name]
    return dataclasses.replace(splits, train=splits.train + rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--first-seed", type=int, default=0)
    a = ap.parse_args()
    for seed in range(a.first_seed, a.first_seed + a.runs):
        for arm in ("private only", "plus public rows"):
            trainer.split_records = with_public_rows if arm != "private only" else ORIGINAL
            trainer.key_of = ORIGINAL_KEY
            cfg = TrainConfig(dataset="covid19_xray", model="effnet_lite0_head", model_args={"public_k": 22},
                              public_data="kermany-test", seed=seed)
            r = trainer.train(cfg, progress=False)
            print(json.dumps({"arm": arm, "seed": seed, "train_rows": len(r.splits.train),
                              "val": round(r.history[-1]["val_accuracy"], 3)}), flush=True)


if __name__ == "__main__":
    main()
