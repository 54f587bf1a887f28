"""The unit-level Poisson sampler of DP-SGD (Opacus's ``UniformWithReplacementSampler``, per unit).

Each step every unit (a patient, a slice block or an image) is in the batch with probability q,
independently of the others, with all of its images; the coins come from the run's secret stream
(``privacy/randomness.py``). Amplification by sampling in the accountant assumes exactly this.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from privmed.privacy.randomness import SecretStream


def steps_per_epoch(sample_rate: float) -> int:
    """Poisson steps that touch each unit once in expectation: round(1 / q), at least 1."""
    return max(1, round(1 / sample_rate))


class UnitBatch(NamedTuple):
    """One sampled batch: example indices, each example's local unit index (0..len(units) - 1, in
    order: a unit's images are together) and the sampled unit ids."""
    idx: torch.Tensor
    local: torch.Tensor
    units: torch.Tensor


class UnitPoissonSampler:
    """``sampler()`` draws one Poisson batch of whole units at rate ``sample_rate``."""

    def __init__(self, units: torch.Tensor, sample_rate: float, stream: SecretStream):
        self.units = torch.as_tensor(units, dtype=torch.long)
        self.n_units = int(self.units.max()) + 1 if len(self.units) else 0
        members = [[] for _ in range(self.n_units)]
        for i, u in enumerate(self.units.tolist()):
            members[u].append(i)
        self.members = [torch.tensor(m, dtype=torch.long) for m in members]
        self.sample_rate = float(sample_rate)
        self.steps_per_epoch = steps_per_epoch(self.sample_rate)
        self.stream = stream

    def __call__(self) -> UnitBatch:
        chosen = torch.from_numpy(self.stream.bernoulli(self.n_units, self.sample_rate)).nonzero()[:, 0]
        if len(chosen) == 0:
            empty = torch.empty(0, dtype=torch.long)
            return UnitBatch(empty, empty, empty)
        sizes = torch.tensor([len(self.members[u]) for u in chosen.tolist()])
        idx = torch.cat([self.members[u] for u in chosen.tolist()])
        return UnitBatch(idx, torch.repeat_interleave(torch.arange(len(chosen)), sizes), chosen)
