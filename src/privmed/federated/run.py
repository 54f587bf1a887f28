"""Run a federation and write an ordinary privmed bundle (+ private run log beside it).

The training split (after the same patient-grouped validation split as ``privmed train``, so the
training patients are the same as a centralised run's) is partitioned into hospitals by patient;
each hospital trains locally with DP-SGD; the server aggregates with FedAvg, through SecAgg+.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, RecordDict
from tqdm import tqdm

from privmed.bundle.format import run_dir, save_bundle, write_run_log
from privmed.bundle.metadata import build_metadata
from privmed.config import bundles_dir
from privmed.federated.apps import UpdateFedAvg, client_app, quiet_flower, server_app
from privmed.federated.config import FederatedConfig
from privmed.federated.grid import LocalGrid
from privmed.federated.hospital import Hospital
from privmed.federated.ledger import federated_ledger
from privmed.federated.partition import partition
from privmed.federated.processes import run_processes
from privmed.federated.simulation import run_ray
from privmed.models import MODELS, get_model
from privmed.privacy import DEFAULT_DELTA, check_budget
from privmed.privacy.accounting import epsilon_of
from privmed.training.data import load_pixels, model_inputs, split_records, unit_ids


class Federation:
    """Hospitals built from a config, the Flower apps and the grid; ``run()`` trains."""

    def __init__(self, cfg: FederatedConfig, progress: bool = True):
        tc = cfg.train
        k, y, units = _setup(self, cfg, progress)
        x = model_inputs(self.model, load_pixels(self.splits.train, tc, progress), progress)
        y = torch.from_numpy(y)
        self.hospitals: dict[int, Hospital] = {}
        for h in cfg.participants():
            idx = torch.from_numpy(self.parts[h])
            _, local = torch.unique(units[idx], return_inverse=True)
            self.hospitals[h] = Hospital(h, x[idx], y[idx], local, k, cfg, self.delta)
        self.initial = _initial_weights(tc, k)
        # SecAgg+'s quantisation scale: twice the hospitals' DP numbers of units (post-processing), so
        # not even the rounding of the secure sum depends on an exact count
        self.max_weight = 2 * max(1, sum(hp.fedavg_weight() for hp in self.hospitals.values()))
        self.rounds_log: list[dict] = []

    def run(self, on_reply=None) -> list[np.ndarray]:
        cfg = self.cfg
        quiet_flower(True)
        n = len(self.hospitals)
        bar = tqdm(total=cfg.rounds, desc=f"federate ({n} hospitals)", disable=not self.progress)
        last = [time.time()]
        node_ids = [1000 + h for h in self.hospitals]  # node config 'hospital' maps a node to its data

        def on_round(r: int, rows: list[dict]) -> None:
            now = time.time()
            self.rounds_log.append({"round": r, "seconds": round(now - last[0], 2), "hospitals": len(rows),
                                    "participants": sorted(int(x["hospital"]) for x in rows),
                                    "bytes_to_hospitals": self.grid.bytes_to_hospitals,
                                    "bytes_to_server": self.grid.bytes_to_server})
            last[0] = now
            bar.update(1)
            bar.set_postfix(steps=max(x["steps"] for x in rows))

        self.strategy = UpdateFedAvg(self.initial, n, on_round, momentum=cfg.server_momentum, server_lr=cfg.server_lr)
        capp = client_app(self.hospitals, cfg.secagg.enabled)
        self.grid = LocalGrid(capp, node_ids, list(self.hospitals), on_reply=on_reply)
        sapp = server_app(self.strategy, cfg.rounds, cfg.secagg, n, self.max_weight, cfg.weight_scope() == "global")
        t0 = time.time()
        sapp(grid=self.grid, context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
        bar.close()
        self.seconds = time.time() - t0
        if len(self.rounds_log) != cfg.rounds:
            raise RuntimeError(f"the federation completed {len(self.rounds_log)} of {cfg.rounds} rounds")
        return self.strategy.current

    def ledger(self) -> dict:
        hl = [self.hospitals[h].ledger() for h in sorted(self.hospitals)]
        return federated_ledger(hl, self.unit, self.cfg, self.delta, _secagg_block(self.cfg, len(self.hospitals)),
                                self.rounds_log)


def _secagg_block(cfg, n: int) -> dict | None:
    if not cfg.secagg.enabled:
        return None
    s = cfg.secagg
    return {"protocol": "SecAgg+ (Flower SecAggPlusWorkflow + secaggplus_mod)", "num_shares": s.num_shares or n,
            "reconstruction_threshold": s.reconstruction_threshold or max(2, n - 1),
            "clipping_range": s.clipping_range, "quantization_range": s.quantization_range}


def _setup(fed, cfg: FederatedConfig, progress: bool):
    """What both engines share: checked model, splits, partition of the training units by patient,
    delta. Sets them on ``fed``; returns (classes, labels, unit ids)."""
    tc = cfg.train
    _check_model(tc)
    fed.cfg, fed.progress = cfg, progress
    fed.splits = split_records(tc)
    k = len(fed.splits.classes)
    fed.model = get_model(tc.model, k, **tc.model_args)
    y = np.array([r.label for r in fed.splits.train], dtype=np.int64)
    units, fed.unit = unit_ids(fed.splits.train, tc.privacy.unit)
    fed.parts = partition(units.numpy(), y, k, cfg.hospitals, cfg.partition, cfg.alpha, cfg.partition_seed)
    # one public delta for every hospital (a delta from the exact number of images would publish it);
    # each hospital refuses one of 1/N_h or more
    fed.delta = tc.privacy.delta if tc.privacy.delta is not None else DEFAULT_DELTA
    return k, y, units


def _initial_weights(tc, k: int) -> list[np.ndarray]:
    torch.manual_seed(tc.seed)  # data-independent initialisation of the global model
    return [p.detach().numpy().copy() for p in get_model(tc.model, k, **tc.model_args).trainable.parameters()]


def _check_model(tc):
    spec = MODELS.get(tc.model)
    if spec is None:
        raise ValueError(f"unknown model '{tc.model}'; choose one of {', '.join(MODELS)}")
    if not spec.dp_ok:
        raise ValueError(f"model '{tc.model}' uses BatchNorm and cannot train with DP")
    if tc.model_args.get("public_k") or tc.public_data:
        raise ValueError("federated training has no public projection yet (each hospital would need the same "
                         "public basis); remove model_args.public_k and public_data")
    if tc.device != "cpu":  # hospitals train on their own CPUs here; a silent fallback would mislead
        raise ValueError(f"federated training runs on the CPU; remove --set device={tc.device}")


class ProcessFederation:
    """Process mode: the same setup as ``Federation`` (splits, partition by patient, delta, initial
    model) without loading any image here; each hospital's SuperNode gets only its own records and
    loads them itself. ``run()`` drives the OS processes (``privmed.federated.processes``) or Flower's
    simulation engine (``privmed.federated.simulation``)."""

    def __init__(self, cfg: FederatedConfig, progress: bool = True):
        tc = cfg.train
        k, _, units = _setup(self, cfg, progress)
        self.site_records, self.units_of = {}, {}
        for h in cfg.participants():
            check_budget(tc.privacy.epsilon, self.delta, len(self.parts[h]))
            self.site_records[h] = [self.splits.train[i] for i in self.parts[h]]
            self.units_of[h] = len(torch.unique(units[torch.from_numpy(self.parts[h])]))
        self.n_units = sum(self.units_of.values())
        self.initial = _initial_weights(tc, k)
        self.hospitals = self.site_records  # the participants (their data stay in their own processes)
        self.rounds_log: list[dict] = []
        self.timing: dict = {}

    def run(self, root: Path, on_tick=None) -> list[np.ndarray]:
        quiet_flower(True)
        if self.cfg.engine == "simulation":
            res = run_ray(self.cfg, self, root, self.progress)
        else:
            res = run_processes(self.cfg, self, root, self.progress, on_tick)
        self.rounds_log, self.timing, self.site_ledgers = res["rounds"], res["timing"], res["ledgers"]
        self.seconds = self.timing["seconds"]
        return res["weights"]

    def ledger(self) -> dict:
        """Each hospital's own public ledger, as it wrote it (counting any round it started and lost);
        epsilon recomputed here from its releases."""
        pc = self.cfg.train.privacy
        hl = []
        for h in sorted(self.site_records):
            led = self.site_ledgers.get(h) or {"hospital": h + 1, "n_units_dp": None, "rounds": 0,
                                               "rounds_run": [], "steps": 0, "releases": []}
            hist = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in led["releases"] if r["steps"]]
            led["epsilon"] = round(epsilon_of(hist, self.delta, pc.accountant), 4) if hist else 0.0
            hl.append(led)
        fw = ("Flower (flwr) ServerApp/ClientApp, deployment engine: flower-superlink + one flower-supernode per "
              "hospital as OS processes, flwr run" + (", TLS" if self.cfg.tls else ", insecure (no TLS)"))
        if self.cfg.engine == "simulation":
            fw = "Flower (flwr) ServerApp/ClientApp, simulation engine (Ray), one simulated SuperNode per hospital"
        return federated_ledger(hl, self.unit, self.cfg, self.delta, _secagg_block(self.cfg, len(hl)),
                                self.rounds_log, framework=fw)


def federate_bundle(cfg: FederatedConfig, out: Path | str | None = None, progress: bool = True,
                    on_tick=None) -> Path:
    """``on_tick``: process mode only, called about once a second with (deployment, rounds done)."""
    tc = cfg.train
    out = Path(out) if out else bundles_dir() / f"{tc.dataset}-federated"
    if cfg.engine in ("processes", "simulation"):
        fed = ProcessFederation(cfg, progress)
        weights = fed.run(run_dir(out) / cfg.engine, on_tick)
    else:
        fed = Federation(cfg, progress)
        weights = fed.run()
    model = fed.model
    with torch.no_grad():
        for p, a in zip(model.trainable.parameters(), weights):
            p.copy_(torch.from_numpy(np.asarray(a, np.float32)).view_as(p))
    model.eval()
    privacy = fed.ledger()
    note = ("federated: no validation releases (temperature 1, argmax decision, no out-of-distribution "
            "detector; the quality gate still runs)")
    meta = build_metadata(tc, fed.splits.classes, released_weights=f"global model after round {cfg.rounds}",
                          privacy=privacy, calibration={"method": "none", "temperature": 1.0, "note": note},
                          federated=cfg.model_dump(mode="json", exclude={"train"}), hospitals=len(fed.hospitals))
    save_bundle(out, model, meta)
    sizes = [{"hospital": h + 1, "images": int(len(p)),
              "class_counts": np.bincount(np.array([fed.splits.train[i].label for i in p]),
                                          minlength=len(fed.splits.classes)).tolist()}
             for h, p in enumerate(fed.parts)]
    log = {"rounds": fed.rounds_log, "partition": sizes, "dataset_fingerprint": fed.splits.fingerprint,
           "training_seconds": round(fed.seconds, 1), "engine": cfg.engine}
    if cfg.engine in ("processes", "simulation"):  # bytes go over sockets / Ray there, not counted
        log.update(processes=fed.timing, messages=None, bytes_to_hospitals=None, bytes_to_server=None)
    else:
        log.update(messages=fed.grid.messages, bytes_to_hospitals=fed.grid.bytes_to_hospitals,
                   bytes_to_server=fed.grid.bytes_to_server)
    write_run_log(out, log)
    return out

