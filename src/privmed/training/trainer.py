"""The training loop: DP-SGD over units of privacy (``privmed.privacy``) unless disabled, a
checkpoint each epoch (resumable, accountant and DP releases included).

One plain loop, ``run_steps``, in Opacus's shape: ``batch = sampler()``, ``optimizer.step(batch)``.
Under DP the sampler is the unit-level Poisson sampler and the optimizer the clip-and-noise one
(``privacy.DPSGD``, its physical-batch splitter inside); without, ``ShuffledBatches`` and
``WeightedLoss``. ``fit`` runs it epoch by epoch (``train`` on a dataset, the privacy audit's
reference models on theirs, ``evaluation/attacks.py``); a federated hospital runs it for its
local steps (``federated/hospital.py``).

Under DP the released weights are the last iterate (or its EMA): choosing an epoch on validation
accuracy would be a release about validation images that no mechanism accounts for. Without DP
the best epoch on validation is kept, with early stopping. Seeds drive only data-independent
choices (initialisation, the validation split); sampling, noise and augmentation under DP come
from a secret ChaCha20 stream (``privacy/randomness.py``). Every parameter of the DP mechanism is
public and fixed before the data are read (epsilon, delta, q, steps, C); the exact numbers of units
and images enter only a refusal (delta < 1/N), never the released model or bundle.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from privmed.config import TrainConfig
from privmed.data.transforms import Augment, SeededDraws
from privmed.files import atomic_path
from privmed.models import MODELS, get_model
from privmed.models.batched import batched_forward
from privmed.privacy import DPSGD, DPPlan
from privmed.privacy.accounting import DEFAULT_DELTA
from privmed.privacy.budget import Registry, key_of, split_of
from privmed.privacy.ledger import release, training_ledger
from privmed.privacy.randomness import SecretStream
from privmed.privacy.releases import class_counts_release, validation_history
from privmed.privacy.sampler import UnitBatch, steps_per_epoch
from privmed.training.data import Splits, load_pixels, model_inputs, split_records, unit_ids
from privmed.training.public import fit_public_basis

warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")


@dataclass
class TrainResult:
    model: nn.Module
    splits: Splits
    history: list[dict] = field(default_factory=list)  # private run log: exact losses, val accuracy
    privacy: dict | None = None
    best_epoch: int = 0
    val_inputs: torch.Tensor | None = None  # what the trainable part sees for val (for calibration)
    train_inputs: torch.Tensor | None = None  # and for train (the OOD detector's class means)
    seconds: float = 0.0
    unit: str = "image"
    budget: dict | None = None  # the dataset's registry key and split identity (under DP)
    public: dict | None = None  # the public corpus behind the head's projection (public facts)


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross entropy of each example alone: no batch normaliser, no weights (those come after clipping)."""
    return F.cross_entropy(logits, y, reduction="none")


def torch_device(name: str) -> torch.device:
    """``TrainConfig.device`` as a torch device; a GPU that is not there is a clear error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--set device={name}: this machine's torch sees no such CUDA GPU "
                         f"({torch.cuda.device_count()} found); use device=cpu or device=auto")
    return dev


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    net.eval()
    dev = next(net.parameters()).device
    logits = batched_forward(lambda xb: net(xb.to(dev)).cpu(), x, batch)
    return float((logits.argmax(1) == y).float().mean())


class _EMA:
    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}

    def update(self, net: nn.Module) -> None:
        for k, v in net.state_dict().items():
            self.state[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)


@dataclass
class Fit:
    """What ``fit`` returns."""
    net: nn.Module  # the plain trainable module holding the weights to release, in eval mode
    history: list[dict]
    best_epoch: int
    engine: DPSGD | None  # under DP: its accountant is the ledger


def make_optimizer(net: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    """``sgd``: momentum 0.9; else Adam."""
    return (torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9) if name == "sgd"
            else torch.optim.Adam(net.parameters(), lr=lr))


def unit_weights(units: torch.Tensor, y: torch.Tensor, class_weight: torch.Tensor) -> torch.Tensor:
    """A unit's weight: the mean class weight of its images (<= 1, applied after clipping)."""
    n = int(units.max()) + 1
    return torch.zeros(n).index_add_(0, units, class_weight[y]) / torch.bincount(units, minlength=n)


def count_weights(y: torch.Tensor, k: int) -> torch.Tensor:
    """Non-DP class weights: inverse exact class frequency, largest = 1 (never under DP)."""
    c = torch.bincount(y, minlength=k).float().clamp(min=1)
    return (1 / c) / (1 / c).max()


def batch_for(batch_size: int, n_units: int) -> int:
    """Keep q <= 1/4 on small sets: amplification needs q < 1."""
    return min(batch_size, max(1, n_units // 4))


# --------------------------------------------------------------------------- the loop and its plain parts

def run_steps(sampler, optimizer, x: torch.Tensor, y: torch.Tensor, steps: int, *, augment=None, device=None,
              after_step=None) -> None:
    """The training loop, private or not: ``steps`` times, draw a batch and take one optimizer step.

    ``sampler()`` gives (example indices, local unit index, unit ids): ``UnitPoissonSampler`` under
    DP, ``ShuffledBatches`` without. ``optimizer.step(x, y, local, unit_ids, loss_fn)``: the
    clip-and-noise ``privacy.DPOptimizer`` (its physical-batch splitter inside) or ``WeightedLoss``.
    Stops early when the optimizer's budget is spent."""
    optimizer.module.train()
    for _ in range(steps):
        if not optimizer.can_step():
            break
        idx, local, unit_ids = sampler()
        xb = augment(x[idx]) if augment is not None and len(idx) else x[idx]
        optimizer.step(xb.to(device), y[idx].to(device), local, unit_ids, per_sample_loss)
        if after_step is not None:
            after_step()


class ShuffledBatches:
    """The non-private sampler: batches of ``batch`` examples without replacement, a new permutation
    each pass over the data, from a torch generator seeded with ``seed`` (never under DP: a seed is no
    secret, see ``privacy/randomness.py``)."""

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch = n, batch
        self.steps_per_epoch = math.ceil(n / batch)
        self._generator = torch.Generator().manual_seed(seed)
        self._order, self._step = None, 0

    def __call__(self) -> UnitBatch:
        if self._step == 0:
            self._order = torch.randperm(self.n, generator=self._generator)
        s, self._step = self._step, (self._step + 1) % self.steps_per_epoch
        return UnitBatch(self._order[s * self.batch:(s + 1) * self.batch], None, None)


class WeightedLoss:
    """The non-private optimizer: the class-weighted mean loss of the batch, backward, one step of
    ``optimizer``. No accountant, so the released epoch may be chosen on validation."""

    releases_last = False

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, class_weight: torch.Tensor, device):
        self.module, self.optimizer = module, optimizer
        self.class_weight = class_weight.to(device)
        self._total, self._count = 0.0, 0

    def can_step(self) -> bool:
        return True

    def step(self, x: torch.Tensor, y: torch.Tensor, local, unit_ids, loss_fn) -> None:
        self.optimizer.zero_grad()
        losses = loss_fn(self.module(x), y)
        (losses * self.class_weight[y]).mean().backward()
        self.optimizer.step()
        self._total += float(losses.detach().sum())
        self._count += len(x)

    def epoch_report(self) -> dict:
        """The epoch's mean training loss (the private run log's), then a fresh count."""
        out = {"train_loss": self._total / max(self._count, 1)}
        self._total, self._count = 0.0, 0
        return out

    def state_dict(self) -> None:  # nothing to resume besides the torch optimizer's state
        return None

    def load_state_dict(self, state) -> None:
        pass


def dp_parts(net: nn.Module, y: torch.Tensor, units: torch.Tensor, weight: torch.Tensor, cfg: TrainConfig,
             plan: DPPlan, stream: SecretStream | None, augment: bool):
    """(sampler, optimizer, augmentation) of DP-SGD, all drawing from one secret ``stream``."""
    stream = stream or SecretStream()
    engine = DPSGD(net, make_optimizer(net, cfg.optimizer, cfg.lr), units, plan, unit_weights(units, y, weight),
                   cfg.privacy.grad_sample_mode, stream, cfg.privacy.physical_batch)
    return engine.sampler, engine, Augment(cfg.augment, draws=stream) if augment else None


def plain_parts(net: nn.Module, y: torch.Tensor, units: torch.Tensor, weight: torch.Tensor, cfg: TrainConfig,
                device: torch.device, augment: bool):
    """(sampler, optimizer, augmentation) without DP: seeded shuffles, the weighted loss, seeded draws."""
    sampler = ShuffledBatches(len(y), batch_for(cfg.batch_size, int(units.max()) + 1), cfg.seed)
    optimizer = WeightedLoss(net, make_optimizer(net, cfg.optimizer, cfg.lr), weight, device)
    return sampler, optimizer, Augment(cfg.augment, draws=SeededDraws(cfg.seed)) if augment else None


@dataclass
class _Run:
    """Where a run stands after each epoch: what a checkpoint holds besides weights and optimizer."""
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    best_epoch: int = 0
    best_acc: float = -1.0
    best_state: dict | None = None
    stale: int = 0

    @classmethod
    def resume(cls, state: dict | None, net: nn.Module, optimizer) -> "_Run":
        if not state:
            return cls()
        _plain(net).load_state_dict(state["model"])
        optimizer.optimizer.load_state_dict(state["optimizer"])
        optimizer.load_state_dict(state["privacy"])
        return cls(state["history"], state["epoch"] + 1, state["best_epoch"], state["best_acc"], state["best_state"],
                   state["stale"])

    def record(self, row: dict, net: nn.Module, keep_best: bool) -> None:
        """``keep_best``: the epoch with the best validation accuracy is the one released."""
        self.history.append(row)
        if not keep_best or row["val_accuracy"] > self.best_acc:
            self.best_acc, self.stale, self.best_epoch = row.get("val_accuracy", -1.0), 0, row["epoch"]
            self.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()} if keep_best else None
        else:
            self.stale += 1

    def checkpoint(self, epoch: int, net: nn.Module, optimizer, ema: "_EMA | None") -> dict:
        return {"epoch": epoch, "model": net.state_dict(), "optimizer": optimizer.optimizer.state_dict(),
                "privacy": optimizer.state_dict(), "ema": ema.state if ema else None, "best_acc": self.best_acc,
                "best_state": self.best_state, "stale": self.stale, "history": self.history,
                "best_epoch": self.best_epoch}


def fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, units: torch.Tensor,
        weight: torch.Tensor | None = None, plan: DPPlan | None = None, *, pixels: bool = False,
        val: tuple[torch.Tensor, torch.Tensor] | None = None, state: dict | None = None, save=None,
        stream: SecretStream | None = None, progress: bool = False) -> Fit:
    """``cfg.epochs`` epochs of ``run_steps`` on the trainable module ``net`` with inputs ``x``
    (cached pixels or frozen features), labels ``y`` and unit ids ``units``.

    With a ``plan``: DP-SGD's parts (``dp_parts``: secret noise, sampling and augmentation from
    ``stream``) with per-unit weights from the public class weights ``weight``. Without: shuffled
    batches (seed ``cfg.seed``) of the ``weight``-weighted loss (``plain_parts``). ``pixels``: augment
    (``cfg.augment``). ``val``: (x, y) scored each epoch; without DP it picks the released epoch and
    stops early; none: the last epoch. ``state``: a checkpoint to resume; ``save(state)`` after
    each epoch. Data stay on the CPU; each batch moves to ``cfg.device``; the returned net is on the CPU."""
    device = torch_device(cfg.device)
    net.to(device)
    weight = torch.ones(int(y.max()) + 1) if weight is None else weight
    augment = cfg.augment.enabled and pixels
    sampler, optimizer, augment = (dp_parts(net, y, units, weight, cfg, plan, stream, augment) if plan is not None
                                   else plain_parts(net, y, units, weight, cfg, device, augment))
    run = _Run.resume(state, net, optimizer)
    ema = _EMA(_plain(net), cfg.ema) if cfg.ema > 0 else None
    if ema and state and state.get("ema"):
        ema.state = state["ema"]
    keep_best = val is not None and not optimizer.releases_last

    bar = tqdm(range(run.start_epoch, cfg.epochs), desc="train", disable=not progress, initial=run.start_epoch,
               total=cfg.epochs)
    for epoch in bar:
        if run.stale >= cfg.patience or not optimizer.can_step():
            break
        run_steps(sampler, optimizer, x, y, sampler.steps_per_epoch, augment=augment, device=device,
                  after_step=(lambda: ema.update(_plain(net))) if ema else None)
        row = {"epoch": epoch + 1}
        if val is not None:
            row["val_accuracy"] = _accuracy(_plain(net), *val)
        row.update(optimizer.epoch_report())
        run.record(row, _plain(net), keep_best)
        bar.set_postfix(val=f"{row.get('val_accuracy', math.nan):.3f}", eps=f"{row.get('epsilon', math.nan):.2f}")
        if save:
            save(run.checkpoint(epoch, _plain(net), optimizer, ema))

    final = _plain(net)
    if ema:
        final.load_state_dict(ema.state)
    elif run.best_state is not None and cfg.release == "best":
        final.load_state_dict(run.best_state)
    last = optimizer.releases_last or cfg.release == "last"
    return Fit(final.cpu().eval(), run.history, len(run.history) if last else run.best_epoch,
               optimizer if plan is not None else None)


def train(cfg: TrainConfig, checkpoint_dir: Path | None = None, progress: bool = True) -> TrainResult:
    t0 = time.time()
    torch.manual_seed(cfg.seed)  # initialisation only
    spec = MODELS.get(cfg.model)
    if spec is None:
        raise ValueError(f"unknown model '{cfg.model}'; choose one of {', '.join(MODELS)}")
    torch_device(cfg.device)  # a missing GPU fails now, not after minutes of feature extraction
    dp = cfg.privacy.enabled
    if dp and not spec.dp_ok:
        raise ValueError(f"model '{cfg.model}' uses BatchNorm and cannot train with DP; pass --no-dp")
    splits = split_records(cfg)
    model = get_model(cfg.model, len(splits.classes), **cfg.model_args)
    public = fit_public_basis(model, cfg, progress)  # public images only
    x_tr = model_inputs(model, load_pixels(splits.train, cfg, progress), progress)
    x_va = model_inputs(model, load_pixels(splits.val, cfg, progress), progress)
    y_tr = torch.tensor([r.label for r in splits.train])
    y_va = torch.tensor([r.label for r in splits.val])
    units, unit = unit_ids(splits.train, cfg.privacy.unit)
    k = len(splits.classes)
    ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
    state = torch.load(ckpt, map_location="cpu", weights_only=False) if ckpt and ckpt.is_file() else None
    if state and _recipe(state["config"]) != _recipe(cfg.model_dump(mode="json")):
        raise ValueError(f"checkpoint {ckpt} was made with other settings; use another --out or delete it")

    plan, stream, counts, budget = None, None, None, None
    weight = count_weights(y_tr, k) if cfg.class_weights and not dp else torch.ones(k)
    if dp:
        stream = SecretStream()
        plan, counts, dp_weights = dp_plan(cfg, y_tr, units, k, stream, state)
        budget = spend_budget(splits, plan, resumed=state is not None)
        if cfg.class_weights:
            weight = torch.tensor(dp_weights, dtype=torch.float32)

    def save(loop_state: dict) -> None:
        _save_checkpoint(ckpt, {"config": cfg.model_dump(mode="json"), **loop_state,
                                "dp_class_counts": None if counts is None else np.asarray(counts).tolist()})

    done = fit(model.trainable, x_tr, y_tr, cfg, units, weight, plan, pixels=spec.takes_pixels,
               val=(x_va, y_va), state=state, save=save if ckpt else None, stream=stream, progress=progress)
    model.trainable = done.net
    model.eval()
    result = TrainResult(model, splits, done.history, best_epoch=done.best_epoch, unit=unit,
                         budget=budget, public=public)
    if done.engine:
        result.privacy = training_ledger(done.engine, unit, epochs=len(result.history), class_counts=counts,
                                         class_weights=weight.tolist() if cfg.class_weights else None,
                                         count_noise=cfg.privacy.count_noise, ood_noise=cfg.privacy.ood_noise)
    result.val_inputs, result.train_inputs, result.seconds = x_va, x_tr, time.time() - t0
    return result


def dp_plan(cfg: TrainConfig, y: torch.Tensor, units: torch.Tensor, k: int, stream: SecretStream,
            state: dict | None = None) -> tuple[DPPlan, np.ndarray, np.ndarray]:
    """(plan, DP class counts, class weights from them). The counts are the first release (sensitivity 1
    per unit); their sum is the DP estimate of the number of units that scales the noisy gradient sum. q,
    steps and delta are public settings."""
    pc = cfg.privacy
    delta = pc.delta if pc.delta is not None else DEFAULT_DELTA
    counts, weights, expected = class_counts_release(y.numpy(), units.numpy(), k, pc.count_noise, pc.epsilon, delta,
                                                     stream, saved=(state or {}).get("dp_class_counts"))
    steps = cfg.epochs * steps_per_epoch(pc.sample_rate)
    plan = DPPlan(pc.epsilon, delta, pc.max_grad_norm, pc.sample_rate, steps, pc.accountant,
                  [(pc.count_noise, 1.0, 1), (pc.ood_noise, 1.0, 1)], expected_units=expected)
    return plan, counts, weights


def spend_budget(splits: Splits, plan: DPPlan, resumed: bool = False) -> dict:
    """Check the run's planned releases (training and validation) against the dataset's budget and
    record them before any DP output exists: a crashed run has spent them too. A resumed run was
    recorded when it started. Every run counts, hyperparameter trials included."""
    reg, key, split = Registry(), key_of(splits), split_of(splits)
    planned = {"train": plan.history(plan.planned_steps),
               "validation": validation_history(plan.epsilon, plan.delta, plan.accountant)}
    if not resumed:  # a resumed run was admitted, and its releases counted, when it started
        reg.check(key, planned, plan.delta, plan.accountant, split=split)
        releases = [release(f"planned {side} release", s, q, n, on=side) for side, hist in planned.items()
                    for s, q, n in hist]
        reg.record(key, {"releases": releases}, what="training run (planned releases)", split=split)
    return {"key": key, "split": split}


def _recipe(config: dict) -> dict:
    """A checkpoint's settings without where it ran: a run may resume on another device."""
    return {k: v for k, v in config.items() if k != "device"}


def _plain(net: nn.Module) -> nn.Module:
    """The plain module under Opacus's GradSampleModule wrapper."""
    return getattr(net, "_module", net)


def _save_checkpoint(path: Path, state: dict) -> None:
    # owner-only like the run log: it holds exact per-epoch validation metrics (private statistics)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with atomic_path(path, private=True) as tmp:  # a kill never leaves a half-written checkpoint
        torch.save(state, tmp)
