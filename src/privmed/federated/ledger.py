"""The federated ledger a bundle states: per hospital, every release with (noise multiplier,
sample rate, steps) so that ``privmed.privacy.ledger.recompute`` (Opacus's accountant) reproduces
each hospital's epsilon; the bundle's epsilon is the largest.

Guarantee. Hospitals hold disjoint patients. Hospital h's outputs (all its updates over all rounds)
are its DP-SGD iterates: (epsilon_h, delta)-DP with respect to adding or removing one of its units,
by the accountant's adaptive composition over every local step of every round (and its DP class
counts). Everything downstream (the server's aggregate, the global model, the bundle) is
post-processing of those outputs, so the guarantee holds against everyone outside hospital h: the
server, the other hospitals, whoever gets the bundle. SecAgg+ does not enter epsilon; it additionally
hides each hospital's individual update from the server (which sees only the sum), as long as fewer
than the reconstruction threshold collude with it.
"""
from __future__ import annotations

from privmed.privacy.ledger import ASSUMPTIONS, RELATION
from privmed.privacy.randomness import SOURCE


def _dp_total(hospital_ledgers: list[dict]) -> float | None:
    """The federation's DP number of units: the sum of the hospitals' DP estimates."""
    parts = [h.get("n_units_dp") for h in hospital_ledgers]
    return None if None in parts else round(sum(parts), 1)


def aggregation(cfg) -> str:
    """How updates become the global model. FedProx, FedAvgM and a local momentum reset use only the
    noisy iterates, the global model and the securely aggregated DP sum: post-processing, no epsilon."""
    parts = ["weighted FedAvg of updates (weight = the hospital's DP number of units, from its DP class counts)"]
    if cfg.fedprox_mu:
        parts.append(f"FedProx local proximal step (mu {cfg.fedprox_mu:g})")
    if cfg.server_momentum or cfg.server_lr != 1:
        parts.append(f"FedAvgM server momentum {cfg.server_momentum:g}, server lr {cfg.server_lr:g} on the "
                     "aggregated update")
    if cfg.local_momentum == "reset":
        parts.append("each hospital resets its optimizer state at the start of every round")
    if len(parts) > 1:
        parts.append("all post-processing of the DP updates and their secure sum: no privacy cost")
    return ", ".join(parts)


def federated_ledger(hospital_ledgers: list[dict], unit: str, cfg, delta: float, secagg: dict | None,
                     rounds_log: list[dict] | None = None,
                     framework: str = "Flower (flwr) ServerApp/ClientApp, in-process grid") -> dict:
    """``rounds_log``: per round, the hospitals whose update the server aggregated ("participants")."""
    from opacus import __version__ as opacus_version

    pc = cfg.train.privacy
    releases = [dict(r, on=f"hospital {h['hospital']}") for h in hospital_ledgers for r in h["releases"]]
    eps = max(h["epsilon"] for h in hospital_ledgers)
    mech = ("federated DP-SGD: local DP-SGD inside each hospital (Gaussian, per-unit clipping, Poisson sampling "
            "of units), weighted FedAvg of the hospitals' updates" + (", Flower SecAgg+ secure aggregation"
                                                                      if secagg else ""))
    return {
        "mechanism": mech,
        "unit_of_privacy": unit,
        "epsilon": round(eps, 4), "epsilon_target": pc.epsilon, "delta": delta,
        "max_grad_norm": pc.max_grad_norm, "accountant": pc.accountant,
        "epochs": None if cfg.local_steps else cfg.rounds * cfg.local_epochs,
        "neighbouring_relation": RELATION + ", within one hospital",
        "n_units_train_dp": _dp_total(hospital_ledgers),
        "opacus_version": opacus_version, "randomness": SOURCE + " (one stream per hospital)",
        "federation": {
            "hospitals": cfg.hospitals, "participants": [h["hospital"] for h in hospital_ledgers],
            "rounds": cfg.rounds, "local_epochs_per_round": None if cfg.local_steps else cfg.local_epochs,
            "local_steps_per_round": cfg.local_steps,
            "partition": cfg.partition, "alpha": cfg.alpha if cfg.partition == "label-skew" else None,
            "partition_seed": cfg.partition_seed, "partition_by": unit,
            "aggregation": aggregation(cfg),
            "secure_aggregation": secagg,
            "framework": framework,
            "spare_rounds": cfg.spare_rounds,
            "class_weights": {"global": "one weighting for every hospital, from the sum of the hospitals' DP class "
                                        "counts (each hospital's own release, in its ledger)",
                              "local": "each hospital weights by its own DP class counts",
                              None: "none"}[cfg.weight_scope()],
            "participation": [{"round": r["round"], "hospitals": r.get("participants")} for r in rounds_log or []],
        },
        "hospitals": hospital_ledgers,
        "releases": releases,
        "composition": "per hospital: sequential over its releases (accountant, all rounds); across hospitals: "
                       "disjoint patients, so each patient's guarantee is its hospital's; "
                       "epsilon = max over hospitals",
        "guarantee": (f"each hospital's {unit}s are protected at (epsilon_h, delta) with epsilon_h <= {eps:.4g}, "
                      f"delta = {delta:.1g}, against everyone outside that hospital: the server, the other "
                      "hospitals and anyone holding the model"),
        "validation_releases": "none: temperature 1, argmax decision, no out-of-distribution detector",
        "assumptions": ASSUMPTIONS,
    }
