"""DP-SGD over units of privacy (patients or images), built on Opacus's per-sample gradients, in
Opacus's shape: a unit-level Poisson sampler (``privacy/sampler.py``), a clip-and-noise optimizer
(``privacy/optimizer.py``) and a physical-batch splitter for memory (``privacy/physical.py``),
driven by one plain loop (``training/trainer.py``: ``run_steps``).

One step: Poisson-sample units with rate q (secret stream), take every image of each sampled
unit, compute per-image gradients (Opacus ``GradSampleModule``), sum them per unit, clip each
unit's sum to norm C, scale it by a public weight w_u <= 1, add N(0, (sigma C)^2) noise (secret
stream) and divide by q * N^, N^ a DP estimate of the number of units (post-processing). Adding
or removing one unit moves the noisy sum by at most C, whatever the rest of the batch holds: each unit's loss and weight
depend on that unit alone. With one image per unit this is standard DP-SGD (Abadi et al. 2016);
with patients it is user-level DP-SGD (McMahan et al. 2018, DP-FedAvg's per-user clipping).
Opacus has no user-level sampler; its accountants count the steps.
"""
from __future__ import annotations

import torch

from privmed.errors import PrivacyBudgetError
from privmed.privacy.accounting import History, epsilon_of, sigma_for
from privmed.privacy.optimizer import DPOptimizer
from privmed.privacy.randomness import SecretStream
from privmed.privacy.sampler import UnitBatch, UnitPoissonSampler, steps_per_epoch


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
        self.steps_per_epoch = steps_per_epoch(self.sample_rate)
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
        plan.steps_per_epoch = steps_per_epoch(sample_rate)
        plan.sample_rate, plan.planned_steps, plan.noise_multiplier = sample_rate, steps, noise_multiplier
        return plan

    def history(self, steps: int) -> History:
        return self.prefix + [(self.noise_multiplier, self.sample_rate, steps)]

    def epsilon_after(self, steps: int) -> float:
        return epsilon_of(self.history(steps), self.delta, self.accountant)


class DPSGD(DPOptimizer):
    """The DP-SGD parts for one run, sharing one secret stream (Opacus's ``make_private``): the
    clip-and-noise optimizer itself and its unit-level Poisson ``sampler``.

    ``units[i]`` is the unit (patient or image) of example i; ``unit_weight[u]`` in [0, 1] a public
    weight applied after clipping (class balance from DP counts)."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, units: torch.Tensor, plan: DPPlan,
                 unit_weight: torch.Tensor | None = None, grad_sample_mode: str = "hooks",
                 stream: SecretStream | None = None, physical_batch: int | None = None):
        stream = stream or SecretStream()  # never stored: see privacy/randomness.py
        self.sampler = UnitPoissonSampler(units, plan.sample_rate, stream)
        super().__init__(module, optimizer, plan, self.sampler.n_units, unit_weight, grad_sample_mode, stream,
                         physical_batch)

    def sample(self) -> UnitBatch:
        """(example indices, local unit index of each example, sampled unit ids) for one
        Poisson-sampled batch: each unit is in with probability q, independently, with all its images."""
        return self.sampler()
