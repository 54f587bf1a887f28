"""DP vs non-DP training time for the same model and epochs (frozen features already cached, so
this times the part DP changes: per-sample clipping, noise, accounting). Early stopping is off so
both runs take the same number of epochs.

    python benchmarks/bench_train_time.py --dataset chest_xray_pneumonia --model effnet_lite0_head
"""
import argparse
import json
import time

from privmed.config import TrainConfig
from privmed.training.trainer import train


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="chest_xray_pneumonia")
    ap.add_argument("--model", default="effnet_lite0_head")
    ap.add_argument("--epochs", type=int, default=30)
    a = ap.parse_args()
    out = {}
    for dp in (False, True, False, True):  # interleaved, twice, against drift on a shared machine
        cfg = TrainConfig(dataset=a.dataset, model=a.model, epochs=a.epochs, patience=a.epochs,
                          privacy={"enabled": dp})
        t = time.perf_counter()
        res = train(cfg, progress=False)
        out.setdefault("dp" if dp else "nodp", []).append(time.perf_counter() - t)
        if dp:
            out["privacy"] = res.privacy
    best = {k: min(v) for k, v in out.items() if k != "privacy"}
    print(json.dumps({"seconds": out, "best": best, "ratio_dp_over_nodp": best["dp"] / best["nodp"],
                      "privacy": out["privacy"]}, indent=2))


if __name__ == "__main__":
    main()
