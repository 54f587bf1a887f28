"""One hospital: its own patients, its own DP-SGD engine and ledger, kept across rounds.

Each round it loads the global weights, takes ``local_steps`` DP-SGD steps on its own units
(Poisson sampling, per-unit clipping, Gaussian noise from its own secret stream) and returns
the update (local - global). Everything it sends is a function of its noisy steps and of what it
received, so by adaptive composition its accountant over all rounds bounds what anyone outside
the hospital (server, other hospitals, the released model) learns about one of its patients.
It refuses a round that would take it past its planned budget.
"""
from __future__ import annotations

import numpy as np
import torch

from privmed.data.transforms import Augment
from privmed.errors import PrivacyBudgetError
from privmed.models import get_model, spec_of
from privmed.privacy import DPSGD, DPPlan
from privmed.privacy.ledger import COUNTS, DP_SGD, dp_sgd_release, release
from privmed.privacy.randomness import SecretStream
from privmed.privacy.releases import class_counts_release
from privmed.training.trainer import make_optimizer, run_steps, unit_weights


class Hospital:
    def __init__(self, index: int, x: torch.Tensor, y: torch.Tensor, units: torch.Tensor, n_classes: int,
                 cfg, delta: float, restore: dict | None = None):
        """``units``: local unit index (0..n-1) of each image; ``cfg``: a FederatedConfig. ``restore``: a
        ``state_dict()`` saved by this hospital (process mode: each round runs in a fresh process); its
        class counts are reused, never released again."""
        tc, pc = cfg.train, cfg.train.privacy
        self.index, self.x, self.y, self.units = index, x, y, units
        # public: q from the settings, never from the hospital's exact number of units
        self.local_steps = cfg.local_steps or max(1, round(1 / pc.sample_rate)) * cfg.local_epochs
        self.rounds = cfg.rounds
        self.fedprox_mu = cfg.fedprox_mu
        self.reset_momentum = cfg.local_momentum == "reset"
        stream = SecretStream()
        prefix, weight = [(pc.count_noise, 1.0, 1)], torch.ones(n_classes)
        # the hospital's own DP class counts (a Gaussian release, composed in): its DP number of units
        # (FedAvg weight, gradient scale) and, with class_weights, its class weights
        self.counts, w, self.n_units_dp = class_counts_release(
            y.numpy(), units.numpy(), n_classes, pc.count_noise, pc.epsilon, delta, stream,
            saved=None if restore is None else restore["counts"])
        if tc.class_weights:
            weight = torch.tensor(w, dtype=torch.float32)
            self._class_weight = w
        # spare rounds: budget planned in for rounds lost to a crash (their steps still count)
        steps = (cfg.rounds + cfg.spare_rounds) * self.local_steps
        self._plan_key = repr((pc.epsilon, delta, pc.max_grad_norm, pc.sample_rate, steps, pc.accountant, prefix))
        saved = (restore or {}).get("plan") or {}
        sigma = saved.get("noise_multiplier") if saved.get("key") == self._plan_key else None
        self.plan = DPPlan(pc.epsilon, delta, pc.max_grad_norm, pc.sample_rate, steps, pc.accountant, prefix,
                           noise_multiplier=sigma, expected_units=self.n_units_dp)
        torch.manual_seed(tc.seed)  # initialisation only (the global model overwrites it each round)
        model = get_model(tc.model, n_classes, **tc.model_args)
        self.net = model.trainable
        opt = make_optimizer(self.net, tc.optimizer, tc.lr)
        self.engine = DPSGD(self.net, opt, units, self.plan, self._unit_weight(weight), pc.grad_sample_mode, stream,
                            pc.physical_batch)
        pixel_model = spec_of(tc.model).takes_pixels  # as privmed train: scattering maps are 4-d too
        self.augment = Augment(tc.augment, draws=stream) if tc.augment.enabled and pixel_model else None
        self.rounds_done = 0
        self.rounds_run: list[int] = []  # the server's round number of each round this hospital ran
        if restore is not None:
            self.engine.load_state_dict(restore["engine"])
            opt.load_state_dict(restore["optimizer"])
            self.rounds_done, self.rounds_run = restore["rounds_done"], list(restore["rounds_run"])
        self.updates: list[list[np.ndarray]] = []  # kept in the hospital for tests; never sent as is

    def fedavg_weight(self) -> int:
        """This hospital's FedAvg weight: its DP number of units (the exact one would be published)."""
        return max(1, round(self.n_units_dp))

    def _unit_weight(self, class_weight: torch.Tensor) -> torch.Tensor:
        """A unit's weight: the mean class weight of its images (public, <= 1)."""
        return unit_weights(self.units, self.y, class_weight)

    def use_class_weight(self, w: np.ndarray) -> None:
        """Global class weights from the server (post-processing of every hospital's DP counts)."""
        w = np.asarray(w, np.float64)
        if w.shape != self.counts.shape or not (0 < w).all() or w.max() > 1 + 1e-9:
            raise ValueError(f"class weights must be {len(self.counts)} values in (0, 1] (got {w.tolist()})")
        self._class_weight = w
        self.engine.unit_weight = self._unit_weight(torch.tensor(w, dtype=torch.float32))

    def _proximal_step(self, anchor: list[torch.Tensor]) -> None:
        """w <- argmin_v ||v - w||^2 / (2 lr) + mu/2 ||v - w_global||^2 = (w + a w_global) / (1 + a),
        a = lr mu: stable for any mu, and a function of the noisy iterate and the global model only."""
        a = self.engine.optimizer.param_groups[0]["lr"] * self.fedprox_mu
        with torch.no_grad():
            for p, g in zip(self.net.parameters(), anchor):
                p.add_(g, alpha=a).div_(1 + a)

    def get_weights(self) -> list[np.ndarray]:
        return [p.detach().cpu().numpy().copy() for p in self.net.parameters()]

    def set_weights(self, arrays: list[np.ndarray]) -> None:
        with torch.no_grad():
            for p, a in zip(self.net.parameters(), arrays):
                p.copy_(torch.from_numpy(np.asarray(a, dtype=np.float32)).view_as(p))

    def state_dict(self) -> dict:
        """What a fresh process needs to continue: accountant, optimizer, DP class counts (no data)."""
        w = getattr(self, "_class_weight", None)
        return {"engine": self.engine.state_dict(), "optimizer": self.engine.optimizer.state_dict(),
                "rounds_done": self.rounds_done, "rounds_run": list(self.rounds_run), "counts": self.counts,
                "class_weight": w, "plan": {"key": self._plan_key, "noise_multiplier": self.plan.noise_multiplier}}

    def fit(self, global_weights: list[np.ndarray], round_no: int | None = None) -> list[np.ndarray]:
        """One round of local DP-SGD; returns the update local - global."""
        if self.engine.steps + self.local_steps > self.plan.planned_steps:
            raise PrivacyBudgetError(
                f"hospital {self.index + 1} refuses round {self.rounds_done + 1}: {self.local_steps} more steps would "
                f"exceed its budget (epsilon {self.plan.epsilon:g}, {self.plan.planned_steps} steps planned for "
                f"{self.rounds} rounds)")
        self.set_weights(global_weights)
        if self.reset_momentum:  # start the round without the velocity of the last one (its local drift)
            self.engine.optimizer.state.clear()
        anchor = [p.detach().clone() for p in self.net.parameters()]
        run_steps(self.engine.sampler, self.engine, self.x, self.y, self.local_steps, augment=self.augment,
                  after_step=(lambda: self._proximal_step(anchor)) if self.fedprox_mu else None)
        self.rounds_done += 1
        self.rounds_run.append(round_no if round_no is not None else self.rounds_done)
        update = [w - g for w, g in zip(self.get_weights(), global_weights)]
        self.updates.append([u.copy() for u in update])
        return update

    def ledger(self, with_epsilon: bool = True) -> dict:
        """Public numbers only: what an accountant needs to recompute this hospital's epsilon."""
        releases = [release(COUNTS, self.plan.prefix[0][0]),
                    dp_sgd_release(self.engine, on=None, what="local " + DP_SGD)]
        return {"hospital": self.index + 1, "n_units_dp": round(self.n_units_dp, 1), "rounds": self.rounds_done,
                "rounds_run": list(self.rounds_run),
                "local_steps_per_round": self.local_steps, "steps": self.engine.steps,
                "noise_multiplier": self.plan.noise_multiplier, "sample_rate": self.plan.sample_rate,
                "max_grad_norm": self.plan.max_grad_norm, "delta": self.plan.delta,
                "epsilon_target": self.plan.epsilon,
                "epsilon": round(self.engine.spent(), 4) if with_epsilon else None,
                "accountant": self.plan.accountant, "releases": releases}
