"""Opacus wiring: one place that turns (model, optimizer, loader) into their DP versions and
keeps the accountant honest, including across a kill and resume."""
from __future__ import annotations

import math

import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator

from privmed.errors import PrivacyBudgetError
from privmed.privacy.accounting import check_budget, epsilon_for, sigma_for


class DPSession:
    """A strict (epsilon, delta) budget over a planned number of Poisson-sampled steps.

    ``can_step()`` is asked before every optimizer step; the run stops rather than exceed epsilon.
    """

    def __init__(self, epsilon: float, delta: float, max_grad_norm: float, n_train: int, batch_size: int,
                 epochs: int, accountant: str = "prv", grad_sample_mode: str = "hooks"):
        check_budget(epsilon, delta, n_train)
        self.epsilon, self.delta, self.max_grad_norm = epsilon, delta, max_grad_norm
        self.accountant_name = accountant
        # Opacus samples each image with q = 1 / len(loader) = 1 / ceil(N / batch); use exactly that q
        # so that the noise calibration, the accountant and the ledger describe what really ran.
        self.steps_per_epoch = math.ceil(n_train / batch_size)
        self.sample_rate = 1.0 / self.steps_per_epoch
        self.planned_steps = self.steps_per_epoch * epochs
        self.noise_multiplier = sigma_for(epsilon, delta, self.sample_rate, self.planned_steps, accountant)
        # Checked once: epsilon grows with steps, so no step up to planned_steps can exceed the target.
        # (Asking the PRV accountant before every step cost ~0.05 s a step, most of a DP epoch of the head.)
        self.planned_epsilon = epsilon_for(self.noise_multiplier, self.sample_rate, self.planned_steps, delta, accountant)
        if self.planned_epsilon > epsilon + 1e-9:
            raise PrivacyBudgetError(f"calibrated noise gives epsilon {self.planned_epsilon:.4f} > target {epsilon}")
        self.engine = PrivacyEngine(accountant=accountant)
        self.grad_sample_mode = grad_sample_mode

    def make_private(self, module: torch.nn.Module, optimizer, loader):
        errors = ModuleValidator.validate(module, strict=False)
        if errors:
            raise ValueError(f"model is not DP-compatible: {errors}")
        if len(loader) != self.steps_per_epoch:
            raise ValueError(f"loader has {len(loader)} batches per epoch, the budget was planned for "
                             f"{self.steps_per_epoch}")
        return self.engine.make_private(
            module=module, optimizer=optimizer, data_loader=loader, noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm, poisson_sampling=True, grad_sample_mode=self.grad_sample_mode,
        )

    @property
    def steps(self) -> int:
        return sum(s for _, _, s in self.engine.accountant.history)

    def spent(self) -> float:
        """Epsilon from the accountant's own history of the steps actually taken."""
        for sigma, q, _ in self.engine.accountant.history:
            if abs(sigma - self.noise_multiplier) > 1e-12 or abs(q - self.sample_rate) > 1e-12:
                raise RuntimeError(f"accountant saw (sigma={sigma}, q={q}), planned ({self.noise_multiplier}, "
                                   f"{self.sample_rate}): refusing to report a ledger that does not match")
        return epsilon_for(self.noise_multiplier, self.sample_rate, self.steps, self.delta, self.accountant_name)

    def can_step(self) -> bool:
        return self.steps + 1 <= self.planned_steps

    def state_dict(self) -> dict:
        return {"accountant": self.engine.accountant.state_dict(), "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate, "planned_steps": self.planned_steps}

    def load_state_dict(self, state: dict) -> None:
        if abs(state["noise_multiplier"] - self.noise_multiplier) > 1e-9 or state["sample_rate"] != self.sample_rate:
            raise ValueError("checkpoint was trained with another noise multiplier or sample rate; delete the "
                             "checkpoint folder (<out>.partial) to start a new run")
        self.engine.accountant.load_state_dict(state["accountant"])

    def ledger(self, epochs: int) -> dict:
        from opacus import __version__ as opacus_version

        return {
            "mechanism": "DP-SGD (Gaussian, per-sample clipping, Poisson sampling)",
            "epsilon": round(self.spent(), 4), "epsilon_target": self.epsilon, "delta": self.delta,
            "noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm,
            "sample_rate": self.sample_rate, "steps": self.steps, "epochs": epochs,
            "accountant": self.accountant_name, "unit_of_privacy": "image", "opacus_version": opacus_version,
        }
