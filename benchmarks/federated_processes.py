"""Start-up and per-round wall time: process mode (SuperLink + SuperNodes as OS processes, TLS) and
Flower's simulation engine (Ray) vs the in-process grid, same federation (docs/FEDERATED.md).

    python benchmarks/federated_processes.py --dataset covid19_xray --rounds 2 --local-epochs 1 \
        --engines inprocess processes simulation

Start-up: from the call until the federation's first message can go out (in-process: the hospitals
built, features loaded; processes: SuperLink and SuperNodes started and ``flwr run`` accepted, the
hospitals load their own data inside their first round; simulation: everything before the server's
rounds, Ray's start-up included). Round seconds: as the server measures
them. One JSON line per engine.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from privmed.federated.config import FederatedConfig
from privmed.federated.run import Federation, ProcessFederation


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="covid19_xray")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--engines", nargs="+", default=["inprocess", "processes"])
    a = ap.parse_args()
    for engine in a.engines:
        cfg = FederatedConfig(train={"dataset": a.dataset}, hospitals=3, rounds=a.rounds,
                              local_epochs=a.local_epochs, engine=engine)
        t0 = time.time()
        if engine == "inprocess":
            fed = Federation(cfg, progress=False)
            setup = time.time() - t0
            fed.run()
            row = {"startup_s": round(setup, 1)}
        else:
            fed = ProcessFederation(cfg, progress=False)
            setup = time.time() - t0
            with tempfile.TemporaryDirectory() as d:
                fed.run(Path(d) / engine)
            rounds = sum(r["seconds"] for r in fed.rounds_log)
            row = {"startup_s": round(setup + fed.timing.get("startup_seconds", fed.timing["seconds"] - rounds), 1)}
        row.update(engine=engine, dataset=a.dataset, rounds=a.rounds, local_epochs=a.local_epochs,
                   round_s=[r["seconds"] for r in fed.rounds_log], total_s=round(time.time() - t0, 1))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
