"""``build_metadata``: the one place a new bundle's metadata is put together. ``privmed train``
(``pipeline.train_bundle``) and ``privmed federate`` (``federated.run.federate_bundle``) both call it;
``bundle.format.save_bundle`` adds the weights' checksum, backbone, time and versions, validates the
whole through ``bundle.schema`` and writes it."""
from __future__ import annotations

import copy

from privmed.bundle.tasks import TASKS, task_of
from privmed.config import TrainConfig

RUN_LOG = "private, beside the bundle (<bundle>.run/), never released"


def model_id(cfg: TrainConfig, hospitals: int | None = None) -> str:
    """``<task>-<model>[-fed<N>]-eps<epsilon>`` for a DP model, ``<task>-<model>-nodp`` otherwise."""
    fed = f"fed{hospitals}-" if hospitals else ""
    return f"{task_of(cfg.dataset)}-{cfg.model}-{fed}" + (f"eps{cfg.privacy.epsilon:g}" if cfg.privacy.enabled
                                                          else "nodp")


def build_metadata(cfg: TrainConfig, classes: list[str], *, released_weights: str, privacy: dict,
                   calibration: dict, decision: dict | None = None, ood: dict | None = None,
                   federated: dict | None = None, hospitals: int | None = None,
                   best_epoch: int | None = None) -> dict:
    """The metadata of a bundle trained with ``cfg`` (``federated``: the federation's config without its
    training config, ``hospitals`` the number that took part); the blocks in the order they are written."""
    task = TASKS.get(cfg.dataset)
    meta = {
        "model_id": model_id(cfg, hospitals), "task": task_of(cfg.dataset), "dataset": cfg.dataset,
        "classes": list(classes),
        "intended_use": copy.deepcopy(task.intended_use) if task else None,
        "model": {"name": cfg.model, "kwargs": dict(cfg.model_args)},
        "input": {"channels": 1, "height": cfg.preprocess.size, "width": cfg.preprocess.size, "range": [0, 1],
                  "color": "grayscale"},
        "preprocessing": cfg.preprocess.model_dump(),
        "training": cfg.model_dump(mode="json"),
        "federated": federated,
        "released_weights": released_weights,
        "privacy": privacy, "calibration": calibration, "decision": decision, "ood": ood,
        "run_log": RUN_LOG,
    }
    if federated is None:
        del meta["federated"]
    if best_epoch is not None:  # a non-private model: its early-stopping epoch is what an audit repeats
        meta["best_epoch"] = best_epoch
    return meta
