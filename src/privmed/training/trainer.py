"""The training loop: DP-SGD over units of privacy (``privmed.privacy``) unless disabled, a
checkpoint each epoch (resumable, accountant and DP releases included). ``fit`` is the loop itself:
``train`` runs it on a dataset, the privacy audit (``evaluation/attacks.py``) on its reference data.

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
from privmed.privacy import DPSGD, DPPlan, check_budget
from privmed.privacy.accounting import DEFAULT_DELTA
from privmed.privacy.budget import Registry, key_of, split_of
from privmed.privacy.ledger import training_ledger
from privmed.privacy.randomness import SecretStream
from privmed.privacy.releases import dp_class_weights, units_estimate, validation_history, weights_from_counts
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


def fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, units: torch.Tensor,
        weight: torch.Tensor | None = None, plan: DPPlan | None = None, *, pixels: bool = False,
        val: tuple[torch.Tensor, torch.Tensor] | None = None, state: dict | None = None, save=None,
        stream: SecretStream | None = None, progress: bool = False) -> Fit:
    """The training loop: ``cfg.epochs`` epochs of the trainable module ``net`` on inputs ``x``
    (cached pixels or frozen features), labels ``y`` and unit ids ``units``.

    With a ``plan``: DP-SGD (``privmed.privacy.DPSGD``, secret noise, sampling and augmentation
    from ``stream``) with per-unit weights from the public class weights ``weight``. Without:
    shuffled batches (seed ``cfg.seed``) of the ``weight``-weighted loss. ``pixels``: augment
    (``cfg.augment``). ``val``: (x, y) scored each epoch; without DP it picks the released epoch and
    stops early; none: the last epoch. ``state``: a checkpoint to resume; ``save(state)`` after
    each epoch. Data stay on the CPU; each batch moves to ``cfg.device``; the returned net is on the CPU."""
    dp = plan is not None
    device = torch_device(cfg.device)
    net.to(device)
    weight = torch.ones(int(y.max()) + 1) if weight is None else weight
    stream = (stream or SecretStream()) if dp else None
    augment = Augment(cfg.augment, draws=stream or SeededDraws(cfg.seed)) if cfg.augment.enabled and pixels else None
    optimizer = make_optimizer(net, cfg.optimizer, cfg.lr)
    engine = None
    if dp:
        engine = DPSGD(net, optimizer, units, plan, unit_weights(units, y, weight), cfg.privacy.grad_sample_mode,
                       stream, cfg.privacy.physical_batch)
        steps_per_epoch = plan.steps_per_epoch
    else:
        batch = batch_for(cfg.batch_size, int(units.max()) + 1)
        steps_per_epoch = math.ceil(len(x) / batch)
        shuffle = torch.Generator().manual_seed(cfg.seed)
        loss_weight = weight.to(device)

    history, best_epoch, start_epoch, best_acc, best_state, stale = [], 0, 0, -1.0, None, 0
    if state:
        _plain(net).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if engine:
            engine.load_state_dict(state["privacy"])
        start_epoch, best_acc, best_state, stale = state["epoch"] + 1, state["best_acc"], state["best_state"], state["stale"]
        history, best_epoch = state["history"], state["best_epoch"]
    ema = _EMA(_plain(net), cfg.ema) if cfg.ema > 0 else None
    if ema and state and state.get("ema"):
        ema.state = state["ema"]

    bar = tqdm(range(start_epoch, cfg.epochs), desc="train", disable=not progress, initial=start_epoch, total=cfg.epochs)
    for epoch in bar:
        if (not dp and stale >= cfg.patience) or (engine and not engine.can_step()):
            break
        (engine.module if engine else net).train()
        total, count = 0.0, 0
        order = None if dp else torch.randperm(len(x), generator=shuffle)
        for s in range(steps_per_epoch):
            if engine:
                if not engine.can_step():
                    break
                idx, local, chosen = engine.sample()
                xb = augment(x[idx]) if augment and len(idx) else x[idx]
                engine.step(xb.to(device), y[idx].to(device), local, chosen, per_sample_loss)
            else:
                idx = order[s * batch:(s + 1) * batch]
                xb, yb = (augment(x[idx]) if augment else x[idx]).to(device), y[idx].to(device)
                optimizer.zero_grad()
                losses = per_sample_loss(net(xb), yb)
                (losses * loss_weight[yb]).mean().backward()
                optimizer.step()
                total += float(losses.detach().sum())
            if ema:
                ema.update(_plain(net))
            count += len(idx)
        row = {"epoch": epoch + 1}
        if val is not None:
            row["val_accuracy"] = _accuracy(_plain(net), *val)
        if not engine:
            row["train_loss"] = total / max(count, 1)
        else:
            row["epsilon"] = engine.spent()
        history.append(row)
        if dp or val is None or row["val_accuracy"] > best_acc:
            best_acc, stale, best_epoch = row.get("val_accuracy", -1.0), 0, epoch + 1
            best_state = None if dp or val is None else {k: v.detach().clone() for k, v in _plain(net).state_dict().items()}
        else:
            stale += 1
        bar.set_postfix(val=f"{row.get('val_accuracy', math.nan):.3f}", eps=f"{row.get('epsilon', math.nan):.2f}")
        if save:
            save({"epoch": epoch, "model": _plain(net).state_dict(), "optimizer": optimizer.state_dict(),
                  "privacy": engine.state_dict() if engine else None, "ema": ema.state if ema else None,
                  "best_acc": best_acc, "best_state": best_state, "stale": stale, "history": history,
                  "best_epoch": best_epoch})

    final = _plain(net)
    if ema:
        final.load_state_dict(ema.state)
    elif best_state is not None and cfg.release == "best":
        final.load_state_dict(best_state)
    last = dp or cfg.release == "last"
    return Fit(final.cpu().eval(), history, len(history) if last else best_epoch, engine)


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
        plan, counts = dp_plan(cfg, y_tr, units, k, len(x_tr), stream, state)
        budget = spend_budget(splits, plan, resumed=state is not None)
        if cfg.class_weights:
            weight = torch.tensor(weights_from_counts(counts), dtype=torch.float32)

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


def dp_plan(cfg: TrainConfig, y: torch.Tensor, units: torch.Tensor, k: int, n_images: int, stream: SecretStream,
            state: dict | None = None) -> tuple[DPPlan, np.ndarray]:
    """(plan, DP class counts). The counts are the first release (sensitivity 1 per unit); their sum
    is the DP estimate of the number of units that scales the noisy gradient sum. q, steps and delta
    are public settings; the exact counts only decide a refusal (delta < 1/N)."""
    pc = cfg.privacy
    delta = pc.delta if pc.delta is not None else DEFAULT_DELTA
    n_units = int(units.max()) + 1
    check_budget(pc.epsilon, delta, max(n_units, n_images))
    if state and state.get("dp_class_counts") is not None:  # a DP output: reuse, never redraw
        counts = np.asarray(state["dp_class_counts"])
    else:
        counts, _ = dp_class_weights(y.numpy(), units.numpy(), k, pc.count_noise, stream)
    steps = cfg.epochs * max(1, round(1 / pc.sample_rate))
    plan = DPPlan(pc.epsilon, delta, pc.max_grad_norm, pc.sample_rate, steps, pc.accountant,
                  [(pc.count_noise, 1.0, 1), (pc.ood_noise, 1.0, 1)], expected_units=units_estimate(counts))
    return plan, counts


def spend_budget(splits: Splits, plan: DPPlan, resumed: bool = False) -> dict:
    """Check the run's planned releases (training and validation) against the dataset's budget and
    record them before any DP output exists: a crashed run has spent them too. A resumed run was
    recorded when it started. Every run counts, hyperparameter trials included."""
    reg, key, split = Registry(), key_of(splits), split_of(splits)
    planned = {"train": plan.history(plan.planned_steps),
               "validation": validation_history(plan.epsilon, plan.delta, plan.accountant)}
    if not resumed:  # a resumed run was admitted, and its releases counted, when it started
        reg.check(key, planned, plan.delta, plan.accountant, split=split)
        releases = [{"on": side, "release": f"planned {side} release", "noise_multiplier": s, "sample_rate": q,
                     "steps": n} for side, hist in planned.items() for s, q, n in hist]
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
