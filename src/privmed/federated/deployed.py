"""The Flower app that ``flwr run`` ships to the SuperLink in process mode (``--engine processes``):
the same hospital ClientApp and FedAvg/SecAgg+ ServerApp as the in-process engine, but each round runs
in fresh ``flwr-clientapp`` / ``flwr-serverapp`` processes, so all state lives in files:

* a hospital's folder (its node config ``site``, given only to its own SuperNode) holds ``site.json``
  (its own records and the recipe), ``state.pt`` (accountant, optimizer, DP class counts) and
  ``ledger.json`` (its public numbers). Before a round it writes the round into ``state.pt`` as
  pending: if the process dies mid-round those steps are counted anyway (never under-count epsilon).
* the server folder holds ``plan.json``, ``checkpoint.npz`` (global weights, participation and, with
  server momentum, the FedAvgM velocity after each completed round, written atomically) and
  ``status.json``; a restarted run resumes from it.
Only the fit stage imports torch: every SecAgg+ stage is a fresh process, so the others stay light.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.server import LegacyContext, ServerApp, ServerConfig

from privmed.data.datasets import Record
from privmed.errors import PrivacyBudgetError
from privmed.federated.apps import (
    LEDGER_KEYS,
    UpdateFedAvg,
    class_weight_of,
    counts_reply,
    exchange_counts,
    make_workflow,
)
from privmed.federated.config import FederatedConfig, SecAggConfig
from privmed.federated.grid import PromptGrid
from privmed.files import atomic_path, atomic_write_text


def _save_torch(obj, path: Path) -> None:
    import torch

    with atomic_path(path, private=True) as tmp:
        torch.save(obj, tmp)


def load_site(site: Path):
    """(hospital index, FederatedConfig, delta, n_classes, x, y, local unit ids) from a hospital folder."""
    import torch

    from privmed.models import get_model
    from privmed.training.data import load_pixels, model_inputs, unit_ids

    spec = json.loads((site / "site.json").read_text())
    cfg = FederatedConfig(**spec["config"])
    records = [Record(**dict(r, path=Path(r["path"]))) for r in spec["records"]]
    model = get_model(cfg.train.model, spec["n_classes"], **cfg.train.model_args)
    x = model_inputs(model, load_pixels(records, cfg.train, False), False)
    y = torch.tensor([r.label for r in records])
    units, _ = unit_ids(records, cfg.train.privacy.unit)
    _, local = torch.unique(units, return_inverse=True)
    return spec["hospital"], cfg, spec["delta"], spec["n_classes"], x, y, local


class SiteClient(NumPyClient):
    def __init__(self, site: Path):
        self.site = site

    def _open(self):
        """(hospital rebuilt from its folder and saved state, that state or None, the state's path)."""
        import torch

        from privmed.federated.hospital import Hospital

        h, cfg, delta, k, x, y, local = load_site(self.site)
        state_path = self.site / "state.pt"
        state = torch.load(state_path, weights_only=False) if state_path.is_file() else None
        return Hospital(h, x, y, local, k, cfg, delta, restore=state), state, state_path

    def get_properties(self, config):
        """The count exchange: this hospital's DP class counts, released once and kept in state.pt
        (asked again after a restart, it answers with the same counts)."""
        if config.get("ask") != "class_counts":
            return {}
        hospital, state, state_path = self._open()
        if state is None:
            _save_torch(dict(hospital.state_dict(), pending=None), state_path)
        return counts_reply(hospital.counts)

    def fit(self, parameters, config):
        hospital, state, state_path = self._open()
        w = class_weight_of(config)
        if w is not None:
            hospital.use_class_weight(w)
        if state and state.get("pending"):
            # a round that started and never finished: its steps may have run, so they count
            e = hospital.engine
            e.accountant.history.append((e.plan.noise_multiplier, e.plan.sample_rate, hospital.local_steps))
            hospital.rounds_done += 1
            hospital.rounds_run.append(-int(state["pending"]))  # negative: lost round
        round_no = int(config.get("round", 0)) or None
        # write-ahead: the round is recorded (state and public ledger) before its first step
        _save_torch(dict(hospital.state_dict(), pending=round_no or hospital.rounds_done + 1), state_path)
        ahead = hospital.ledger(with_epsilon=False)
        ahead["steps"] += hospital.local_steps
        ahead["releases"][-1]["steps"] += hospital.local_steps
        ahead["pending_round"] = round_no
        if hospital.engine.steps + hospital.local_steps <= hospital.plan.planned_steps:
            atomic_write_text(self.site / "ledger.json", json.dumps(ahead), private=True)
        try:
            update = hospital.fit(parameters, round_no=round_no)
        except PrivacyBudgetError:  # refused before any step
            _save_torch(dict(hospital.state_dict(), pending=None), state_path)
            atomic_write_text(self.site / "ledger.json", json.dumps(hospital.ledger(with_epsilon=False)), private=True)
            raise
        _save_torch(dict(hospital.state_dict(), pending=None), state_path)
        led = hospital.ledger(with_epsilon=False)
        atomic_write_text(self.site / "ledger.json", json.dumps(led), private=True)
        return update, hospital.fedavg_weight(), {k: led[k] for k in LEDGER_KEYS}


def _client_fn(context: Context):
    return SiteClient(Path(str(context.node_config["site"]))).to_client()


# secaggplus_mod passes non-SecAgg+ messages straight through, so one app serves both workflows
client = ClientApp(client_fn=_client_fn, mods=[secaggplus_mod])
server = ServerApp()


def read_checkpoint(path: Path) -> tuple[list[np.ndarray], dict, list[np.ndarray] | None] | None:
    """(global weights, meta, FedAvgM server velocity or None) of the last completed round."""
    if not path.is_file():
        return None
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        n = meta["n_arrays"]
        velocity = [z[f"v{i}"] for i in range(n)] if meta.get("velocity") else None
        return [z[f"w{i}"] for i in range(n)], meta, velocity


def write_checkpoint(path: Path, weights: list[np.ndarray], meta: dict,
                     velocity: list[np.ndarray] | None = None) -> None:
    """Weights, meta and (with server momentum) the velocity, in one atomic replace."""
    meta = dict(meta, n_arrays=len(weights), velocity=velocity is not None)
    arrays = {f"w{i}": w for i, w in enumerate(weights)}
    arrays.update({f"v{i}": v for i, v in enumerate(velocity or [])})
    with atomic_path(path, private=True, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, meta=json.dumps(meta), **arrays)


@server.main()
def _server_main(grid, context: Context) -> None:
    grid = PromptGrid(grid)
    plan_path = Path(str(context.run_config["plan"]))
    plan = json.loads(plan_path.read_text())
    folder = plan_path.parent
    status = folder / "status.json"
    try:
        ck = read_checkpoint(folder / "checkpoint.npz")
        if ck is None:
            with np.load(folder / "initial.npz") as z:
                weights, meta = [z[f"w{i}"] for i in range(len(z.files))], {"round": 0, "rounds": []}
            velocity = None
        else:
            weights, meta, velocity = ck
        done = int(meta["round"])
        n, rounds = plan["hospitals"], plan["rounds"]
        if done < rounds:
            t0 = time.time()
            while len(list(grid.get_node_ids())) < n and time.time() - t0 < plan["node_wait"]:
                time.sleep(0.5)
            last = [time.time()]

            def on_round(r: int, rows: list[dict]) -> None:
                now = time.time()
                meta["rounds"].append({"round": r, "seconds": round(now - last[0], 2),
                                       "participants": sorted(int(x["hospital"]) for x in rows)})
                meta["round"] = r
                last[0] = now
                write_checkpoint(folder / "checkpoint.npz", strategy.current, meta,
                                 strategy.velocity if strategy.momentum else None)

            fc = plan["config"]  # FedAvgM: server momentum, its velocity carried over a resume
            strategy = UpdateFedAvg(weights, n, on_round, plan["min_hospitals"], round_offset=done,
                                    momentum=fc["server_momentum"], server_lr=fc["server_lr"], velocity=velocity)
            if plan.get("class_weight_scope") == "global":  # once; a resumed run reuses the checkpoint's
                w = meta.get("class_weight") or exchange_counts(grid, plan["stage_timeout"])
                meta["class_weight"] = None if w is None else [float(v) for v in w]
                strategy.class_weight = None if w is None else np.asarray(w)
            workflow = make_workflow(SecAggConfig(**plan["secagg"]), n, plan["total_units"], plan["stage_timeout"])
            workflow(grid, LegacyContext(context=context, config=ServerConfig(num_rounds=rounds - done),
                                         strategy=strategy))
        ck = read_checkpoint(folder / "checkpoint.npz")
        state = "finished" if ck and ck[1]["round"] == rounds else "incomplete"
        atomic_write_text(status, json.dumps({"state": state, "run_id": context.run_id}))
    except Exception as e:
        atomic_write_text(status, json.dumps({"state": "failed", "error": f"{type(e).__name__}: {e}"}))
        raise
