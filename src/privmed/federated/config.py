"""Typed settings of a federation: the model recipe (an ordinary ``TrainConfig``) plus hospitals,
rounds, partition and secure aggregation. Every field can be set from the CLI (``--set``)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from privmed.config import TrainConfig


class SecAggConfig(BaseModel):
    enabled: bool = True
    # SecAgg+ (Bell et al. 2020) as Flower implements it: each hospital secret-shares its mask keys
    # with num_shares others; any reconstruction_threshold of them can unmask a dropped hospital
    num_shares: int | None = None  # None: all hospitals
    reconstruction_threshold: int | None = None  # None: hospitals - 1 (one may drop out), at least 2
    clipping_range: float = Field(8.0, gt=0)  # updates are clipped to +-this before quantisation
    quantization_range: int = Field(2 ** 22, gt=0)


class FederatedConfig(BaseModel):
    train: TrainConfig = Field(default_factory=TrainConfig)
    hospitals: int = Field(3, ge=1, le=50)
    rounds: int = Field(10, ge=1, le=500)
    local_epochs: int = Field(3, ge=1, le=100)  # per round, in each hospital (epochs over its own units)
    # DP-SGD steps per round in each hospital instead of local_epochs epochs; 1 = FedSGD: the server's
    # aggregate is then one centralised DP-SGD step (no local drift under label skew, more rounds)
    local_steps: int | None = Field(None, ge=1, le=1000)
    partition: Literal["iid", "label-skew"] = "iid"
    alpha: float = Field(0.5, gt=0)  # Dirichlet concentration for label-skew (small = strong skew)
    partition_seed: int = 0
    secagg: SecAggConfig = Field(default_factory=SecAggConfig)
    # "processes": one flower-superlink and one flower-supernode per hospital as OS processes;
    # "simulation": Flower's simulation engine (Ray actors; the `simulation` extra)
    engine: Literal["inprocess", "processes", "simulation"] = "inprocess"
    tls: bool = True  # processes: TLS between SuperNodes and SuperLink (certificates made at start)
    spare_rounds: int = Field(0, ge=0, le=100)  # budget for rounds lost to a crash (raises sigma)
    stage_timeout: float = Field(120.0, gt=0)  # processes: seconds the server waits for a SecAgg+/fit stage
    restarts: int = Field(2, ge=0, le=10)  # processes: SuperLink restarts (resume from checkpoint)
    # class weights (train.class_weights): "global" = one weighting for all, from the sum of every
    # hospital's DP class counts (a count exchange before round 1); "local" = each hospital its own
    # counts (under label skew each then pulls toward its own rare classes: brain 71.6 % vs 77.4 % unweighted)
    class_weight_scope: Literal["global", "local"] = "global"
    # FedProx (Li et al. 2020): after each local step, the exact proximal step towards the round's
    # global model (strength mu); data-independent, so it costs no privacy. 0 = plain FedAvg.
    fedprox_mu: float = Field(0.0, ge=0)
    # FedAvgM (Hsu et al. 2019): the server keeps momentum on the averaged update and steps by
    # server_lr; post-processing of the (DP, securely aggregated) sum, so it costs no privacy. 0 / 1 = FedAvg.
    server_momentum: float = Field(0.0, ge=0, lt=1)
    server_lr: float = Field(1.0, gt=0, le=10)
    # each hospital's SGD momentum across rounds: "keep" its velocity from the last round, or "reset" it
    local_momentum: Literal["keep", "reset"] = "keep"
    # train only these hospitals (0-based) of the partition: one index = "that hospital alone"
    only: list[int] | None = None

    @model_validator(mode="after")
    def _check(self) -> "FederatedConfig":
        if not self.train.privacy.enabled:
            raise ValueError("privmed federate trains with DP inside each hospital only; drop --no-dp "
                             "(use privmed train --no-dp for a non-private model)")
        if self.only is not None:
            bad = [h for h in self.only if not 0 <= h < self.hospitals]
            if bad or not self.only or len(set(self.only)) != len(self.only):
                raise ValueError(f"only must list distinct hospitals in 0..{self.hospitals - 1} (got {self.only})")
        n = len(self.only) if self.only is not None else self.hospitals
        if self.secagg.enabled and n < 2:
            raise ValueError("secure aggregation needs at least 2 hospitals (with one, the sum is that hospital's "
                             "update); pass --no-secagg to train a hospital alone")
        if self.secagg.enabled:
            t = self.secagg.reconstruction_threshold
            s = self.secagg.num_shares or n
            if t is not None and not 2 <= t <= s:
                raise ValueError(f"secagg.reconstruction_threshold must be in 2..num_shares={s} (got {t})")
            if s > n:
                raise ValueError(f"secagg.num_shares ({s}) cannot exceed the number of hospitals ({n})")
        return self

    def weight_scope(self) -> str | None:
        """"global", "local", or None when the hospitals weight no classes."""
        if not self.train.class_weights:
            return None
        return self.class_weight_scope

    def participants(self) -> list[int]:
        return list(self.only) if self.only is not None else list(range(self.hospitals))
