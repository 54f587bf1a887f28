"""Short DP training runs of the from-scratch CNN on chest X-ray, printing the per-epoch history
(train loss, validation accuracy). Used to look for a recipe that does not collapse to the majority
class; results in docs/notebook/BENCHMARKS.md.

    python benchmarks/tune_dp_cnn.py --size 64 --lr 1e-3 --batch-size 256 --epochs 4 --optimizer adam
    python benchmarks/tune_dp_cnn.py --lr 0.1 --batch-size 1024 --epochs 15 --optimizer sgd --no-augment
    python benchmarks/tune_dp_cnn.py --balance --epochs 8 --no-augment   # 1,207 images per class
"""
import argparse
import dataclasses
import json
import random
import time

from privmed.config import TrainConfig
from privmed.training import trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--epsilon", type=float, default=2.0)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--no-dp", action="store_true")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--no-class-weights", action="store_true")
    ap.add_argument("--balance", action="store_true", help="undersample the training split to equal classes")
    a = ap.parse_args()
    if a.balance:
        split = trainer.split_records

        def balanced(cfg):
            s = split(cfg)
            by: dict[int, list] = {}
            for r in s.train:
                by.setdefault(r.label, []).append(r)
            m = min(len(v) for v in by.values())
            rng = random.Random(0)
            return dataclasses.replace(s, train=[r for v in by.values() for r in rng.sample(v, m)])

        trainer.split_records = balanced
    cfg = TrainConfig(dataset="chest_xray_pneumonia", model="cnn", epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                      optimizer=a.optimizer, class_weights=not a.no_class_weights, preprocess={"size": a.size},
                      augment={"enabled": not a.no_augment},
                      privacy={"enabled": not a.no_dp, "epsilon": a.epsilon, "max_grad_norm": a.max_grad_norm})
    t = time.time()
    r = trainer.train(cfg, progress=False)
    print(json.dumps({"args": vars(a), "seconds": round(time.time() - t),
                      "history": [[h["epoch"], round(h["train_loss"], 3), round(h["val_accuracy"], 3)]
                                  for h in r.history]}))


if __name__ == "__main__":
    main()
