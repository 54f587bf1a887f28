"""``privmed federate``: registered by ``privmed.cli``. Imports Flower only when run, so the rest of
the CLI works without the ``federated`` extra."""
from __future__ import annotations

import json

from privmed.errors import PrivmedError
from privmed.training.recipe import add_train_arguments, set_path, train_config


def federated_config(a):
    from privmed.federated.config import FederatedConfig

    tc = train_config(a).model_dump(mode="json")
    over: dict = {"train": tc, "secagg": {"enabled": not a.no_secagg}}
    if a.insecure:
        over["tls"] = False
    for k, v in {"hospitals": a.hospitals, "rounds": a.rounds, "local_epochs": a.local_epochs,
                 "local_steps": a.local_steps, "partition": a.partition, "alpha": a.alpha,
                 "partition_seed": a.partition_seed,
                 "only": a.only, "engine": a.engine, "spare_rounds": a.spare_rounds,
                 "class_weight_scope": a.class_weight_scope, "fedprox_mu": a.fedprox_mu,
                 "server_momentum": a.server_momentum, "server_lr": a.server_lr,
                 "local_momentum": a.local_momentum}.items():
        if v is not None:
            over[k] = v
    for item in a.fed_set or []:
        if "=" not in item:
            raise PrivmedError(f"--fed-set takes KEY=VALUE (for example secagg.clipping_range=4), got '{item}'")
        set_path(over, *item.split("=", 1))
    return FederatedConfig(**over)


def cmd_federate(a):
    try:
        import flwr  # noqa: F401
    except ModuleNotFoundError:
        raise PrivmedError("privmed federate needs Flower: pip install -e '.[federated]'") from None
    from privmed.bundle.format import read_metadata, read_run_log, run_dir
    from privmed.federated.run import federate_bundle

    cfg = federated_config(a)
    out = federate_bundle(cfg, a.out, progress=not a.quiet)
    meta, run = read_metadata(out), read_run_log(out)
    p = meta.ledger
    summary = {"bundle": str(out), "run_log": str(run_dir(out)), "model_id": meta.model_id,
               "epsilon": p.epsilon, "delta": p.delta, "guarantee": p.guarantee,
               "hospitals": [{k: h[k] for k in ("hospital", "n_units_dp", "noise_multiplier", "sample_rate", "steps",
                                                "epsilon")} for h in p.hospitals],
               "secure_aggregation": p.federation.secure_aggregation is not None,
               "training_seconds": run["training_seconds"], "engine": run.get("engine"),
               "processes": run.get("processes"), "bytes_to_server": run["bytes_to_server"],
               "bytes_to_hospitals": run["bytes_to_hospitals"]}
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"bundle written to {out} (private run log: {summary['run_log']})")
        print(p.guarantee)
        for h in summary["hospitals"]:
            print(f"  hospital {h['hospital']}: {h['n_units_dp']} units (DP estimate), "
                  f"sigma {h['noise_multiplier']:.4g}, "
                  f"q {h['sample_rate']:.4g}, {h['steps']} steps, epsilon {h['epsilon']:.4g}")
    return 0


def register(sub, privacy_sub) -> None:
    f = sub.add_parser("federate", help="federated training across hospitals (Flower; DP inside each hospital, "
                                        "SecAgg+)")
    add_train_arguments(f, with_no_dp=False)
    f.add_argument("--hospitals", type=int, help="number of hospitals (default 3)")
    f.add_argument("--rounds", type=int, help="federated rounds (default 10)")
    f.add_argument("--local-epochs", type=int,
                   help="epochs over its own units each hospital runs per round (default 3)")
    f.add_argument("--local-steps", type=int,
                   help="DP-SGD steps per round in each hospital instead of --local-epochs (1: FedSGD, no local drift)")
    f.add_argument("--partition", choices=["iid", "label-skew"], help="how patients are dealt to hospitals")
    f.add_argument("--alpha", type=float, help="Dirichlet concentration for label-skew (default 0.5)")
    f.add_argument("--partition-seed", type=int, help="seed of the (reproducible) partition")
    f.add_argument("--only", type=int, nargs="+", help="train only these hospitals (0-based), e.g. one alone")
    f.add_argument("--no-secagg", action="store_true", help="plain FedAvg: the server sees each hospital's update")
    f.add_argument("--engine", choices=["inprocess", "processes", "simulation"],
                   help="inprocess (default): one process; processes: flower-superlink + one flower-supernode per "
                        "hospital as OS processes on 127.0.0.1, started with flwr run (TLS); simulation: Flower's "
                        "simulation engine (Ray; pip install -e '.[simulation]')")
    f.add_argument("--insecure", action="store_true", help="processes: no TLS between SuperNodes and SuperLink")
    f.add_argument("--class-weight-scope", choices=["global", "local"],
                   help="global (default): one weighting from the sum of the hospitals' DP class counts; "
                        "local: each hospital its own")
    f.add_argument("--fedprox-mu", type=float, help="FedProx proximal strength (default 0: plain FedAvg)")
    f.add_argument("--server-momentum", type=float,
                   help="FedAvgM server momentum on the averaged update (default 0: plain FedAvg; no privacy cost)")
    f.add_argument("--server-lr", type=float, help="FedAvgM server step on the momentum update (default 1)")
    f.add_argument("--local-momentum", choices=["keep", "reset"],
                   help="each hospital's optimizer state across rounds: keep (default) or reset at every round")
    f.add_argument("--spare-rounds", type=int, help="budget planned in for rounds lost to a crash (default 0)")
    f.add_argument("--fed-set", action="append", metavar="KEY=VALUE",
                   help="any federation field, e.g. secagg.clipping_range=4")
    f.set_defaults(fn=cmd_federate, no_dp=False)
