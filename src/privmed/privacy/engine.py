"""DP-SGD over units of privacy (patients or images), built on Opacus's per-sample gradients.

One step: Poisson-sample units with rate q (secret stream), take every image of each sampled
unit, compute per-image gradients (Opacus ``GradSampleModule``), sum them per unit, clip each
unit's sum to norm C, scale it by a public weight w_u <= 1, add N(0, (sigma C)^2) noise (secret
stream) and divide by q * N^, N^ a DP estimate of the number of units (post-processing). Adding or removing one unit moves
the noisy sum by at most C, whatever the rest of the batch holds: each unit's loss and weight
depend on that unit alone. With one image per unit this is standard DP-SGD (Abadi et al. 2016);
with patients it is user-level DP-SGD (McMahan et al. 2018, DP-FedAvg's per-user clipping).
Opacus has no user-level sampler; its accountants count the steps.
"""
from __future__ import annotations

import warnings

import torch
from opacus.accountants import create_accountant
from opacus.grad_sample.utils import get_gsm_class
from opacus.validators import ModuleValidator

from privmed.errors import PrivacyBudgetError
from privmed.privacy.accounting import History, epsilon_of, sigma_for
from privmed.privacy.randomness import SOURCE, SecretStream

warnings.filterwarnings("ignore", message="Full backward hook is firing")


class DPPlan:
    """Noise for a strict (epsilon, delta) budget over ``steps`` Poisson steps at rate
    ``sample_rate``, after the releases in ``prefix`` (e.g. DP class counts) have been composed in.

    Every parameter of the mechanism (q, steps, delta, C, sigma) is public and fixed before any
    private data is touched: none is a function of the exact number of units, so publishing them
    reveals nothing and the add/remove guarantee stands. ``expected_units`` (a DP estimate of the
    number of units, e.g. the sum of the DP class counts) only scales the noisy sum into a mean
    gradient: post-processing of DP outputs."""

    def __init__(self, epsilon: float, delta: float, max_grad_norm: float, sample_rate: float, steps: int,
                 accountant: str = "prv", prefix: History = (), noise_multiplier: float | None = None,
                 expected_units: float | None = None):
        """``noise_multiplier``: from an earlier calibration of this same plan (a federated hospital's
        saved state, one process per round): skips the search; the budget check below still runs."""
        if not 0 < sample_rate <= 0.5:
            raise PrivacyBudgetError(f"sample rate must be in (0, 0.5] (got {sample_rate}): amplification needs q < 1")
        if not steps >= 1:
            raise PrivacyBudgetError(f"need at least one step (got {steps})")
        self.epsilon, self.delta, self.max_grad_norm = epsilon, delta, max_grad_norm
        self.accountant, self.prefix = accountant, list(prefix)
        self.sample_rate, self.planned_steps = float(sample_rate), int(steps)
        self.steps_per_epoch = max(1, round(1 / self.sample_rate))
        self.expected_units = expected_units
        self.noise_multiplier = noise_multiplier or sigma_for(epsilon, delta, self.sample_rate, self.planned_steps,
                                                              accountant, prefix=self.prefix)
        self.planned_epsilon = self.epsilon_after(self.planned_steps)
        if self.planned_epsilon > epsilon + 1e-9:
            raise PrivacyBudgetError(f"calibrated noise gives epsilon {self.planned_epsilon:.4f} > target {epsilon}")

    @classmethod
    def with_noise(cls, noise_multiplier: float, sample_rate: float, max_grad_norm: float, n_units: int,
                   steps: int, accountant: str = "rdp", delta: float = 1e-6) -> "DPPlan":
        """A plan with a given noise multiplier (to repeat a recipe, e.g. audit reference models)."""
        plan = cls.__new__(cls)
        plan.epsilon, plan.delta, plan.max_grad_norm = float("inf"), delta, max_grad_norm
        plan.accountant, plan.prefix, plan.expected_units = accountant, [], n_units
        plan.steps_per_epoch = max(1, round(1 / sample_rate))
        plan.sample_rate, plan.planned_steps, plan.noise_multiplier = sample_rate, steps, noise_multiplier
        return plan

    def history(self, steps: int) -> History:
        return self.prefix + [(self.noise_multiplier, self.sample_rate, steps)]

    def epsilon_after(self, steps: int) -> float:
        return epsilon_of(self.history(steps), self.delta, self.accountant)


class DPSGD:
    """Wraps ``module`` for per-sample gradients and performs noisy, unit-clipped optimizer steps.

    ``units[i]`` is the unit (patient or image) of example i; ``unit_weight[u]`` in [0, 1] a public
    weight applied after clipping (class balance from DP counts)."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, units: torch.Tensor, plan: DPPlan,
                 unit_weight: torch.Tensor | None = None, grad_sample_mode: str = "hooks",
                 stream: SecretStream | None = None, physical_batch: int | None = None):
        errors = ModuleValidator.validate(module, strict=False)
        if errors:
            raise ValueError(f"model is not DP-compatible: {errors}")
        self.module = get_gsm_class(grad_sample_mode)(module, batch_first=True, loss_reduction="sum")
        self.optimizer, self.plan = optimizer, plan
        self.units = torch.as_tensor(units, dtype=torch.long)
        n_units = int(self.units.max()) + 1 if len(self.units) else 0
        self.members = [[] for _ in range(n_units)]
        for i, u in enumerate(self.units.tolist()):
            self.members[u].append(i)
        self.members = [torch.tensor(m, dtype=torch.long) for m in self.members]
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

    randomness = SOURCE

    @property
    def steps(self) -> int:
        return sum(n for s, q, n in self.accountant.history)

    def can_step(self) -> bool:
        return self.steps < self.plan.planned_steps

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(example indices, local unit index of each example, sampled unit ids) for one
        Poisson-sampled batch: each unit is in with probability q, independently, with all its images."""
        chosen = torch.from_numpy(self.stream.bernoulli(len(self.members), self.plan.sample_rate)).nonzero()[:, 0]
        if len(chosen) == 0:
            empty = torch.empty(0, dtype=torch.long)
            return empty, empty, empty
        sizes = torch.tensor([len(self.members[u]) for u in chosen.tolist()])
        idx = torch.cat([self.members[u] for u in chosen.tolist()])
        return idx, torch.repeat_interleave(torch.arange(len(chosen)), sizes), chosen

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
        """(example slice, unit slice) pieces of a sampled batch of at most ``physical_batch`` images,
        whole units only (``local`` is sorted, as ``sample`` returns it): each unit is clipped in one
        piece, so the summed pieces equal the one-piece clipped sum and the bound C holds."""
        if not len(local):
            return []
        if bool((local[1:] < local[:-1]).any()):
            raise ValueError("physical batches need each unit's images together, in order (as sample() gives them)")
        sizes = torch.bincount(local.cpu()).tolist()
        cap = self.physical_batch or sum(sizes)
        out, ex0, un0, n = [], 0, 0, 0
        for u, k in enumerate(sizes):
            if n and n + k > cap:
                out.append((slice(ex0, ex0 + n), slice(un0, u)))
                ex0, un0, n = ex0 + n, u, 0
            n += k
        out.append((slice(ex0, ex0 + n), slice(un0, len(sizes))))
        return out

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

    def state_dict(self) -> dict:
        # the accountant only; the stream is secret and a resumed run draws a new key
        return {"history": list(self.accountant.history), "noise_multiplier": self.plan.noise_multiplier,
                "sample_rate": self.plan.sample_rate, "planned_steps": self.plan.planned_steps}

    def load_state_dict(self, state: dict) -> None:
        if abs(state["noise_multiplier"] - self.plan.noise_multiplier) > 1e-9 or state["sample_rate"] != self.plan.sample_rate:
            raise ValueError("checkpoint was trained with another noise multiplier or sample rate; delete the "
                             "checkpoint folder (<out>.partial) to start a new run")
        self.accountant.history = [tuple(h) for h in state["history"]]

    @property
    def plain_module(self) -> torch.nn.Module:
        return self.module._module
