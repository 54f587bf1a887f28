"""The clip-and-noise optimizer of DP-SGD (Opacus's ``DPOptimizer``, with per-unit clipping).

One step on a sampled batch: per-image gradients (Opacus ``GradSampleModule``), summed per unit,
each unit's sum clipped to norm C and scaled by a public weight w_u <= 1, then N(0, (sigma C)^2)
noise from the secret stream (``privacy/randomness.py``, never a seeded torch generator) and a
division by q * N^ (N^ a DP estimate of the number of units: post-processing); then the wrapped
torch optimizer steps and the accountant counts the step. Adding or removing one unit moves the
noisy sum by at most C, whatever the rest of the batch holds: each unit's loss and weight depend
on that unit alone. Sampling is the sampler's (``privacy/sampler.py``), memory the splitter's
(``privacy/physical.py``).
"""
from __future__ import annotations

import warnings

import torch
from opacus.accountants import create_accountant
from opacus.grad_sample.utils import get_gsm_class
from opacus.validators import ModuleValidator

from privmed.errors import PrivacyBudgetError
from privmed.privacy.physical import physical_batches
from privmed.privacy.randomness import SOURCE, SecretStream

warnings.filterwarnings("ignore", message="Full backward hook is firing")


class DPOptimizer:
    """Wraps ``module`` for per-sample gradients and performs noisy, unit-clipped steps of ``optimizer``.

    ``plan``: a ``DPPlan`` (sigma, C, q, steps, the DP unit estimate); ``unit_weight[u]`` in [0, 1]:
    a public weight applied after clipping (class balance from DP counts), one per unit."""

    randomness = SOURCE
    releases_last = True  # choosing an epoch on validation would be a release no mechanism accounts for

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, plan, n_units: int,
                 unit_weight: torch.Tensor | None = None, grad_sample_mode: str = "hooks",
                 stream: SecretStream | None = None, physical_batch: int | None = None):
        errors = ModuleValidator.validate(module, strict=False)
        if errors:
            raise ValueError(f"model is not DP-compatible: {errors}")
        self.module = get_gsm_class(grad_sample_mode)(module, batch_first=True, loss_reduction="sum")
        self.optimizer, self.plan = optimizer, plan
        w = torch.ones(n_units) if unit_weight is None else torch.as_tensor(unit_weight, dtype=torch.float32)
        if len(w) != n_units or w.min() < 0 or w.max() > 1 + 1e-6:
            raise ValueError("unit weights must be one per unit, in [0, 1] (weights > 1 would break the bound C)")
        self.unit_weight = w
        self.stream = stream or SecretStream()  # never stored: see privacy/randomness.py
        if not plan.expected_units:
            raise ValueError("the plan needs expected_units, a DP estimate of the number of units (e.g. the sum "
                             "of the DP class counts): scaling by the exact count would publish it")
        self.expected_units = float(plan.expected_units)
        self.physical_batch = physical_batch  # images per forward/backward; a unit is never split
        self.accountant = create_accountant(plan.accountant)
        self.params = [p for p in self.module.parameters() if p.requires_grad]

    @property
    def steps(self) -> int:
        return sum(n for s, q, n in self.accountant.history)

    def can_step(self) -> bool:
        return self.steps < self.plan.planned_steps

    def clipped_sum(self, x: torch.Tensor, y: torch.Tensor, local: torch.Tensor, unit_ids: torch.Tensor,
                    loss_fn) -> list[torch.Tensor]:
        """Sum over sampled units of w_u * clip_C(sum of the unit's per-image gradients)."""
        if len(x) == 0:
            return [torch.zeros_like(p) for p in self.params]
        for p in self.params:
            p.grad_sample = None
            p.grad = None
        loss_fn(self.module(x), y).sum().backward()
        n_local = int(local.max()) + 1
        local = local.to(x.device)
        per_unit = []
        for p in self.params:
            g = p.grad_sample.reshape(len(x), -1)
            per_unit.append(torch.zeros(n_local, g.shape[1], dtype=g.dtype, device=g.device).index_add_(0, local, g))
        norms = torch.sqrt(sum((g ** 2).sum(1) for g in per_unit))
        factor = (self.plan.max_grad_norm / (norms + 1e-6)).clamp(max=1.0) * self.unit_weight[unit_ids].to(norms.device)
        out = [(g * factor[:, None]).sum(0).view_as(p) for g, p in zip(per_unit, self.params)]
        for p in self.params:
            p.grad_sample = None
        return out

    def chunks(self, local: torch.Tensor) -> list[tuple[slice, slice]]:
        """The splitter's pieces of a sampled batch (``physical.physical_batches``)."""
        return physical_batches(local, self.physical_batch)

    def batch_clipped_sum(self, x: torch.Tensor, y: torch.Tensor, local: torch.Tensor, unit_ids: torch.Tensor,
                          loss_fn) -> list[torch.Tensor]:
        """``clipped_sum`` of a sampled batch, computed in pieces of at most ``physical_batch`` images."""
        pieces = self.chunks(local) if self.physical_batch else []
        if len(pieces) <= 1:
            return self.clipped_sum(x, y, local, unit_ids, loss_fn)
        summed = None
        for ex, un in pieces:
            part = self.clipped_sum(x[ex], y[ex], local[ex] - un.start, unit_ids[un], loss_fn)
            summed = part if summed is None else [a + b for a, b in zip(summed, part)]
        return summed

    def step(self, x: torch.Tensor, y: torch.Tensor, local: torch.Tensor, unit_ids: torch.Tensor, loss_fn) -> None:
        """One DP-SGD step on the sampled batch (may be empty: a noise-only step, still counted)."""
        if not self.can_step():
            raise PrivacyBudgetError(f"budget exhausted: {self.steps} of {self.plan.planned_steps} planned steps taken")
        summed = self.batch_clipped_sum(x, y, local, unit_ids, loss_fn)
        std = self.plan.noise_multiplier * self.plan.max_grad_norm
        scale = self.plan.sample_rate * self.expected_units  # post-processing: the noisy sum -> a mean
        for p, s in zip(self.params, summed):
            # drawn on the CPU from the one secret stream, then moved: the same mechanism on any device
            noise = self.stream.noise(p.shape, std).to(device=p.device, dtype=s.dtype)
            p.grad = (s + noise) / scale
        self.optimizer.step()
        self.accountant.step(noise_multiplier=self.plan.noise_multiplier, sample_rate=self.plan.sample_rate)

    def spent(self) -> float:
        for sigma, q, _ in self.accountant.history:
            if abs(sigma - self.plan.noise_multiplier) > 1e-12 or abs(q - self.plan.sample_rate) > 1e-12:
                raise RuntimeError(f"accountant saw (sigma={sigma}, q={q}), planned ({self.plan.noise_multiplier}, "
                                   f"{self.plan.sample_rate}): refusing to report a ledger that does not match")
        return self.plan.epsilon_after(self.steps)

    def epoch_report(self) -> dict:
        """What the run log records after an epoch: the epsilon spent so far."""
        return {"epsilon": self.spent()}

    def state_dict(self) -> dict:
        # the accountant only; the stream is secret and a resumed run draws a new key
        return {"history": list(self.accountant.history), "noise_multiplier": self.plan.noise_multiplier,
                "sample_rate": self.plan.sample_rate, "planned_steps": self.plan.planned_steps}

    def load_state_dict(self, state: dict) -> None:
        plan = self.plan
        if abs(state["noise_multiplier"] - plan.noise_multiplier) > 1e-9 or state["sample_rate"] != plan.sample_rate:
            raise ValueError("checkpoint was trained with another noise multiplier or sample rate; delete the "
                             "checkpoint folder (<out>.partial) to start a new run")
        self.accountant.history = [tuple(h) for h in state["history"]]

    @property
    def plain_module(self) -> torch.nn.Module:
        return self.module._module
