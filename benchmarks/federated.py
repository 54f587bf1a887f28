"""Federated vs centralised vs each hospital alone, same per-hospital epsilon (docs/FEDERATED.md).

    python benchmarks/federated.py --dataset chest_xray_pneumonia --model effnet_lite0_multi \\
        --rounds 10 --local-epochs 4

Every setting runs through the same code (privmed.federated.run.Federation): "centralised" is one
hospital holding every training patient (privmed train's DP-SGD recipe, rounds x local epochs
epochs at q = batch / units, no early stopping); "alone" is one hospital of the 3-way partition
training by itself. Metrics on the official test split (leaked images removed) and on the
validation split (for recipe choice), argmax decision and raw softmax (no DP calibration in any
setting), from the cached frozen features. One JSON line per setting.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from privmed.evaluation.metrics import classification_report
from privmed.federated.config import FederatedConfig
from privmed.federated.run import Federation
from privmed.training.data import load_pixels, model_inputs, test_records


def metrics(fed: Federation, weights, split: str = "test") -> dict:
    tc = fed.cfg.train
    recs = test_records(tc)[0] if split == "test" else fed.splits.val
    x = model_inputs(fed.model, load_pixels(recs, tc, False), False)
    net = fed.model.trainable
    with torch.no_grad():
        for p, a in zip(net.parameters(), weights):
            p.copy_(torch.from_numpy(np.asarray(a, np.float32)).view_as(p))
        probs = torch.softmax(net(x), 1).numpy()
    r = classification_report(np.array([r.label for r in recs]), probs, fed.splits.classes)
    return {"accuracy": round(r["accuracy"], 4), "auc": round(r["auc"], 4)}


def run(name: str, cfg: FederatedConfig) -> dict:
    t0 = time.time()
    fed = Federation(cfg, progress=False)
    weights = fed.run()
    led = fed.ledger()
    hl = led["hospitals"]
    val = {f"val_{k}": v for k, v in metrics(fed, weights, "val").items()}
    row = {"setting": name, **metrics(fed, weights), **val, "seconds": round(fed.seconds, 1),
           "bytes_to_server": fed.grid.bytes_to_server, "bytes_to_hospitals": fed.grid.bytes_to_hospitals,
           "epsilon_per_hospital": [h["epsilon"] for h in hl], "delta": led["delta"],
           "sigma_per_hospital": [round(h["noise_multiplier"], 4) for h in hl],
           "q_per_hospital": [round(h["sample_rate"], 4) for h in hl], "steps_per_hospital": [h["steps"] for h in hl],
           "units_per_hospital": [h["n_units"] for h in hl], "unit": led["unit_of_privacy"],
           "accountant": led["accountant"], "model": cfg.train.model, "lr": cfg.train.lr,
           "max_grad_norm": cfg.train.privacy.max_grad_norm,
           "class_weights": cfg.weight_scope(), "fedprox_mu": cfg.fedprox_mu, "batch_size": cfg.train.batch_size,
           "server_momentum": cfg.server_momentum, "server_lr": cfg.server_lr, "local_momentum": cfg.local_momentum,
           "rounds": cfg.rounds, "local_epochs": cfg.local_epochs,
           "local_steps": cfg.local_steps, "round_seconds": [r["seconds"] for r in fed.rounds_log],
           "wall_seconds": round(time.time() - t0, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="chest_xray_pneumonia")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-epochs", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=None, help="steps per round instead of --local-epochs")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--model", default="effnet_lite0_head")
    ap.add_argument("--lr", type=float, default=None, help="default: the model's (privmed train's)")
    ap.add_argument("--no-class-weights", action="store_true", help="no DP class-count weighting in any hospital")
    ap.add_argument("--class-weight-scope", choices=["global", "local"], default=None,
                    help="default: global (one weighting from the sum of the hospitals' DP counts)")
    ap.add_argument("--fedprox-mu", type=float, default=0.0, help="FedProx proximal strength (0: FedAvg)")
    ap.add_argument("--server-momentum", type=float, default=0.0, help="FedAvgM server momentum (0: FedAvg)")
    ap.add_argument("--server-lr", type=float, default=1.0, help="server step on the (momentum) averaged update")
    ap.add_argument("--local-momentum", choices=["keep", "reset"], default="keep",
                    help="hospital SGD momentum across rounds")
    ap.add_argument("--max-grad-norm", type=float, default=None, help="default: privmed train's clip C")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="default: privmed train's (each hospital: min(this, units / 4))")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every chosen setting this many times (fresh DP noise each)")
    ap.add_argument("--only", nargs="*", default=None, help="settings to run (default all)")
    a = ap.parse_args()
    train = {"dataset": a.dataset, "model": a.model, **({"lr": a.lr} if a.lr else {}),
             **({"batch_size": a.batch_size} if a.batch_size else {}),
             **({"privacy": {"max_grad_norm": a.max_grad_norm}} if a.max_grad_norm else {})}
    if a.no_class_weights:
        train["class_weights"] = False
    base = {"train": train, "rounds": a.rounds, "local_epochs": a.local_epochs, "local_steps": a.local_steps,
            **({"class_weight_scope": a.class_weight_scope} if a.class_weight_scope else {}),
            "fedprox_mu": a.fedprox_mu, "server_momentum": a.server_momentum, "server_lr": a.server_lr,
            "local_momentum": a.local_momentum}
    settings = {
        "centralised": dict(base, hospitals=1, secagg={"enabled": False}),
        "fed-iid-secagg": dict(base, hospitals=3),
        "fed-iid-plain": dict(base, hospitals=3, secagg={"enabled": False}),
        "fed-skew-secagg": dict(base, hospitals=3, partition="label-skew", alpha=a.alpha),
        "fed-skew-plain": dict(base, hospitals=3, partition="label-skew", alpha=a.alpha, secagg={"enabled": False}),
        **{f"alone-iid-h{h + 1}": dict(base, hospitals=3, only=[h], secagg={"enabled": False}) for h in range(3)},
        **{f"alone-skew-h{h + 1}": dict(base, hospitals=3, only=[h], partition="label-skew", alpha=a.alpha,
                                       secagg={"enabled": False}) for h in range(3)},
    }
    for _ in range(a.repeat):
        for name, kw in settings.items():
            if a.only is None or name in a.only:
                run(name, FederatedConfig(**kw))


if __name__ == "__main__":
    main()
