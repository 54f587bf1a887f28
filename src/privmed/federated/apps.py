"""The Flower apps: a ClientApp per hospital (local DP-SGD; with SecAgg+ its ``secaggplus_mod``
masks the update before it leaves) and a ServerApp running weighted FedAvg of the updates,
through Flower's SecAgg+ workflow (the server only ever holds the sum) or its plain fit workflow.

Hospitals send updates (local - global), weighted by their number of units (public, as in DP-SGD
accounting); SecAgg+ quantises them after clipping to +-clipping_range, a deterministic
post-processing of DP outputs. The metrics a hospital returns are its public ledger numbers.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

# epsilon itself is left to the final ledger: the PRV accountant takes seconds per call
LEDGER_KEYS = ("hospital", "n_units_dp", "rounds", "local_steps_per_round", "steps", "noise_multiplier",
               "sample_rate", "delta")


def vector_to_config(prefix: str, v) -> dict:
    """A vector as Flower config scalars ``prefix0``, ``prefix1``, ... (empty for None)."""
    return {} if v is None else {f"{prefix}{c}": float(x) for c, x in enumerate(v)}


def vector_from_config(prefix: str, config) -> np.ndarray | None:
    k = sum(1 for key in config if str(key).startswith(prefix))
    return np.array([float(config[f"{prefix}{c}"]) for c in range(k)], np.float64) if k else None


def counts_reply(counts) -> dict:
    """A hospital's answer to the count exchange: its DP class counts (already a release in its ledger)."""
    return vector_to_config("count_", counts)


def class_weight_of(config) -> np.ndarray | None:
    """The global class weights the server put in a round's config (``cw_0``, ``cw_1``, ...)."""
    return vector_from_config("cw_", config)


class _HospitalClient(NumPyClient):
    def __init__(self, hospital):
        self.hospital = hospital

    def get_properties(self, config):
        return counts_reply(self.hospital.counts) if config.get("ask") == "class_counts" else {}

    def fit(self, parameters, config):
        w = class_weight_of(config)
        if w is not None:
            self.hospital.use_class_weight(w)
        update = self.hospital.fit(parameters, round_no=int(config.get("round", 0)) or None)
        led = self.hospital.ledger(with_epsilon=False)
        return update, self.hospital.fedavg_weight(), {k: led[k] for k in LEDGER_KEYS}


def client_app(hospitals: dict[int, object], secagg: bool) -> ClientApp:
    """``hospitals``: node config 'hospital' index -> Hospital (each node sees only its own)."""
    def client_fn(context: Context):
        return _HospitalClient(hospitals[int(context.node_config["hospital"])]).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secagg else [])


class UpdateFedAvg(FedAvg):
    """FedAvg over updates: global += weighted mean of the hospitals' updates. With SecAgg+ the
    workflow hands in the unmasked weighted mean once per hospital (identical copies)."""

    def __init__(self, initial: list[np.ndarray], n: int, on_round: Callable[[int, list[dict]], None] | None,
                 min_hospitals: int | None = None, round_offset: int = 0, momentum: float = 0.0,
                 server_lr: float = 1.0, velocity: list[np.ndarray] | None = None):
        """``min_hospitals``: a round runs with this many (process mode: n - 1, so a dead SuperNode does
        not stall it); ``round_offset``: rounds already done before a resume (round numbers stay global);
        ``momentum``/``server_lr``: FedAvgM (Hsu et al. 2019), heavy-ball momentum on the averaged update
        (post-processing of the DP sum: no privacy cost); ``velocity``: its state after a resume."""
        m = min_hospitals or n
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=m, min_evaluate_clients=0,
                         min_available_clients=m, initial_parameters=ndarrays_to_parameters(initial),
                         accept_failures=True, fit_metrics_aggregation_fn=lambda _: {})
        self.current = [a.copy() for a in initial]
        self.on_round, self.round_offset = on_round, round_offset
        self.momentum, self.server_lr = momentum, server_lr
        self.velocity = [v.copy() for v in velocity] if velocity is not None else [np.zeros_like(a) for a in initial]
        self.class_weight: np.ndarray | None = None  # global weights from the count exchange
        self.ledgers: dict[int, dict] = {}
        self.aggregates: list[list[np.ndarray]] = []  # what the server computed each round (tests)

    def configure_fit(self, server_round, parameters, client_manager):
        # the server's own current model, not whatever parameters the workflow carries
        r = server_round + self.round_offset
        config = {"round": r, **vector_to_config("cw_", self.class_weight)}
        return [(c, FitIns(ndarrays_to_parameters(self.current), config))
                for c, _ in super().configure_fit(server_round, parameters, client_manager)]

    def aggregate_fit(self, server_round, results, failures):
        if not results:
            raise RuntimeError(f"round {server_round + self.round_offset}: no hospital returned an update "
                               f"({len(failures)} failures)")
        avg, _ = super().aggregate_fit(server_round, results, failures)
        mean_update = parameters_to_ndarrays(avg)
        self.aggregates.append([a.copy() for a in mean_update])
        self.velocity = [self.momentum * v + u.astype(v.dtype) for v, u in zip(self.velocity, mean_update)]
        self.current = [c + self.server_lr * v for c, v in zip(self.current, self.velocity)]
        rows = [dict(r.metrics) for _, r in results]
        for row in rows:
            self.ledgers[int(row["hospital"])] = row
        if self.on_round:
            self.on_round(server_round + self.round_offset, rows)
        return ndarrays_to_parameters(self.current), {}


class SetupDropoutSecAggPlus(SecAggPlusWorkflow):
    """Flower 1.42's SecAgg+ keeps a hospital that never answered the setup stage (stage 0) among the
    sampled nodes, then fails the round at unmasking because nobody holds key shares of it. Such a
    hospital sent nothing (no keys, no shares, no vector), so it leaves the round as if never sampled;
    the threshold check over the others still applies. A hospital lost after stage 0 is unmasked by
    Flower's own dropout path."""

    def setup_stage(self, grid, context, state) -> bool:
        ok = super().setup_stage(grid, context, state)
        state.sampled_node_ids = set(state.active_node_ids)
        return ok


def exchange_counts(grid, timeout: float | None = None) -> np.ndarray | None:
    """Before round 1 (global class weights): ask every hospital for its DP class counts and return
    one weighting from their sum. The counts are DP releases already in each hospital's ledger; the
    weights are their post-processing, public and <= 1, so per-unit sensitivity stays C."""
    from flwr.app import Message
    from flwr.common import GetPropertiesIns, MessageTypeLegacy
    from flwr.compat.common.recorddict_compat import getpropertiesins_to_recorddict, recorddict_to_getpropertiesres

    from privmed.privacy.releases import weights_from_counts

    content = getpropertiesins_to_recorddict(GetPropertiesIns({"ask": "class_counts"}))
    msgs = [Message(content=content, dst_node_id=n, message_type=MessageTypeLegacy.GET_PROPERTIES)
            for n in grid.get_node_ids()]
    counts = []
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if reply.has_error():
            continue  # an unreachable hospital adds no counts; the others still agree on one weighting
        c = vector_from_config("count_", recorddict_to_getpropertiesres(reply.content).properties)
        if c is not None:
            counts.append(c)
    return weights_from_counts(sum(counts)) if counts else None


def make_workflow(secagg_cfg, n: int, total_units: int, timeout: float | None = None) -> DefaultWorkflow:
    """``total_units``: a bound on the weights' sum, never released (the in-process engine: twice the
    hospitals' DP numbers of units; process mode: twice the units the coordinator dealt); SecAgg+ scales each update
    by its weight / max_weight before quantising, so a bound near the total keeps the quantisation step small.
    ``timeout``: seconds a stage waits for replies (process mode: a dead hospital must not stall it)."""
    if secagg_cfg.enabled:
        shares = secagg_cfg.num_shares or n
        threshold = secagg_cfg.reconstruction_threshold or max(2, n - 1)
        fit = SetupDropoutSecAggPlus(num_shares=shares, reconstruction_threshold=threshold,
                                 clipping_range=secagg_cfg.clipping_range,
                                 quantization_range=secagg_cfg.quantization_range,
                                 max_weight=float(total_units), timeout=timeout)
        return DefaultWorkflow(fit_workflow=fit)
    return DefaultWorkflow()


def server_app(strategy: UpdateFedAvg, rounds: int, secagg_cfg, n: int, total_units: int,
               global_weights: bool = False) -> ServerApp:
    workflow = make_workflow(secagg_cfg, n, total_units)
    app = ServerApp()

    @app.main()
    def main(grid, context: Context) -> None:
        if global_weights:
            strategy.class_weight = exchange_counts(grid)
        workflow(grid, LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy))

    return app


def quiet_flower(on: bool = True) -> None:
    """Flower logs every stage at INFO; privmed shows its own progress bar instead."""
    logging.getLogger("flwr").setLevel(logging.WARNING if on else logging.INFO)
