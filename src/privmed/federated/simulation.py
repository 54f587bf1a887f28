"""``--engine simulation``: Flower's simulation engine (Ray; the ``simulation`` extra).

The apps are process mode's (``deployed.py``): every hospital keeps its state in its own folder
(accountant, optimizer, DP class counts, written before each round), so whichever Ray actor runs a
hospital's message rebuilds that hospital from its folder and nothing is lost between actors. A
simulated SuperNode's ``partition-id`` picks its hospital folder; the ServerApp runs in this process.
"""
from __future__ import annotations

import json
import os
import threading
import time
from functools import partial
from pathlib import Path

from privmed.errors import PrivmedError
from privmed.federated.processes import collect, prepare


def _client_fn(sites: list[str], context):
    from privmed.federated.deployed import SiteClient

    return SiteClient(Path(sites[int(context.node_config["partition-id"])])).to_client()


def _server_main(plan: str, grid, context) -> None:
    from flwr.app import Context

    from privmed.federated.deployed import _server_main as main

    main(grid, Context(run_id=context.run_id, node_id=context.node_id, node_config=context.node_config,
                       state=context.state, run_config={"plan": plan}))


def run_ray(cfg, setup, root: Path, progress: bool = True) -> dict:
    """Run the federation in Flower's simulation engine; returns what ``run_processes`` returns."""
    try:
        import ray  # noqa: F401
        from flwr.simulation import run_simulation
    except ModuleNotFoundError:
        raise PrivmedError("--engine simulation needs Flower's simulation engine (Ray): "
                           "pip install -e '.[simulation]'") from None
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.server import ServerApp
    from tqdm import tqdm

    from privmed.federated.deployed import read_checkpoint

    plan = prepare(root, cfg, setup)
    sites = [str(root / f"hospital-{h}") for h in sorted(setup.site_records)]
    client = ClientApp(client_fn=partial(_client_fn, sites), mods=[secaggplus_mod])
    server = ServerApp()
    server.main()(partial(_server_main, str(plan)))
    n = len(sites)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": max(1, min(n, os.cpu_count() or 1)), "include_dashboard": False,
                             "log_to_driver": False}}
    bar = tqdm(total=cfg.rounds, desc=f"federate ({n} simulated nodes, Ray)", disable=not progress)
    stop = threading.Event()

    def watch() -> None:  # the engine blocks: show rounds from the server's checkpoint
        shown = 0
        while not stop.wait(1.0):
            ck = read_checkpoint(root / "server" / "checkpoint.npz")
            done = ck[1]["round"] if ck else 0
            bar.update(done - shown)
            shown = done

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.time()
    try:
        run_simulation(server_app=server, client_app=client, num_supernodes=n, backend_config=backend)
    finally:
        stop.set()
        watcher.join()
        bar.close()
    status = root / "server" / "status.json"
    st = json.loads(status.read_text()) if status.is_file() else {"state": "not started"}
    if st["state"] != "finished":
        raise PrivmedError(f"the simulated federation stopped ({st['state']}: {st.get('error', '')})")
    res = collect(root, setup)
    res["timing"] = {"seconds": round(time.time() - t0, 2)}
    return res
