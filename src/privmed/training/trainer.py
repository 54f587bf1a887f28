"""The training loop: Adam, cross entropy, early stopping on validation accuracy, a checkpoint
each epoch (resumable, accountant included), DP-SGD through ``privmed.privacy`` unless disabled."""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from privmed.config import TrainConfig
from privmed.data.transforms import Augment
from privmed.models import MODELS, get_model
from privmed.privacy import DPSession, default_delta
from privmed.training.data import Splits, load_pixels, model_inputs, split_records


# Known, understood warnings: secure_mode needs torchcsprng (not installable here, see
# docs/PRIVACY.md); the backward-hook note is Opacus's hooks on a first layer with no input grad.
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")


@dataclass
class TrainResult:
    model: nn.Module
    splits: Splits
    history: list[dict] = field(default_factory=list)
    privacy: dict | None = None
    best_epoch: int = 0
    val_inputs: torch.Tensor | None = None  # what the trainable part sees for val (for calibration)
    seconds: float = 0.0


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> tuple[float, torch.Tensor]:
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(x[i:i + batch]) for i in range(0, len(x), batch)])
    return float((logits.argmax(1) == y).float().mean()), logits


def train(cfg: TrainConfig, checkpoint_dir: Path | None = None, progress: bool = True) -> TrainResult:
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    spec = MODELS.get(cfg.model)
    if spec is None:
        raise ValueError(f"unknown model '{cfg.model}'; choose one of {', '.join(MODELS)}")
    if cfg.privacy.enabled and not spec.dp_ok:
        raise ValueError(f"model '{cfg.model}' uses BatchNorm and cannot train with DP; pass --no-dp")
    splits = split_records(cfg)
    model = get_model(cfg.model, len(splits.classes))
    x_tr = model_inputs(model, load_pixels(splits.train, cfg, progress), progress)
    x_va = model_inputs(model, load_pixels(splits.val, cfg, progress), progress)
    y_tr = torch.tensor([r.label for r in splits.train])
    y_va = torch.tensor([r.label for r in splits.val])
    augment = Augment(cfg.augment, cfg.seed) if cfg.augment.enabled and isinstance(model.frozen, nn.Identity) else None

    n = len(x_tr)
    weight = None
    if cfg.class_weights:
        counts = torch.bincount(y_tr, minlength=len(splits.classes)).float()
        weight = counts.sum() / (len(counts) * counts.clamp(min=1))
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    net = model.trainable
    optimizer = (torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9) if cfg.optimizer == "sgd"
                 else torch.optim.Adam(net.parameters(), lr=cfg.lr))
    gen = torch.Generator()
    # Small sets (covid19_xray: 226 images) would otherwise sample everything each step (q = 1),
    # where DP-SGD's subsampling amplification is lost; keep q <= 1/4.
    batch = min(cfg.batch_size, max(1, n // 4))
    loader = DataLoader(TensorDataset(x_tr, y_tr), batch_size=batch, shuffle=True, generator=gen)

    session = None
    if cfg.privacy.enabled:
        delta = cfg.privacy.delta if cfg.privacy.delta is not None else default_delta(n)
        session = DPSession(cfg.privacy.epsilon, delta, cfg.privacy.max_grad_norm, n, batch,
                            cfg.epochs, cfg.privacy.accountant)
        net, optimizer, loader = session.make_private(net, optimizer, loader)

    result = TrainResult(model, splits)
    start_epoch, best_acc, best_state, stale = 0, -1.0, None, 0
    ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
    if ckpt and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state["config"] != cfg.model_dump(mode="json"):
            raise ValueError(f"checkpoint {ckpt} was made with other settings; use another --out or delete it")
        _module(net).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if session:
            session.load_state_dict(state["privacy"])
        start_epoch, best_acc, best_state, stale = state["epoch"] + 1, state["best_acc"], state["best_state"], state["stale"]
        result.history, result.best_epoch = state["history"], state["best_epoch"]

    bar = tqdm(range(start_epoch, cfg.epochs), desc="train", disable=not progress, initial=start_epoch,
               total=cfg.epochs)
    for epoch in bar:
        if stale >= cfg.patience or (session and not session.can_step()):
            break
        gen.manual_seed(cfg.seed * 100_003 + epoch)  # same batches after a resume
        torch.manual_seed(cfg.seed * 100_019 + epoch)  # same noise after a resume
        net.train()
        total, count = 0.0, 0
        for xb, yb in loader:
            if session and not session.can_step():
                break
            if len(xb) == 0:  # Poisson sampling can draw an empty batch: a noise-only step, still counted
                optimizer.zero_grad()
                net(xb).sum().backward()
                optimizer.step()
                continue
            if augment:
                xb = augment(xb)
            optimizer.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()) * len(xb), count + len(xb)
        val_acc, _ = _accuracy(net, x_va, y_va)
        row = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "val_accuracy": val_acc}
        if session:
            row["epsilon"] = session.spent()
        result.history.append(row)
        if val_acc > best_acc:
            best_acc, stale, result.best_epoch = val_acc, 0, epoch + 1
            best_state = {k: v.detach().clone() for k, v in _module(net).state_dict().items()}
        else:
            stale += 1
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{val_acc:.3f}",
                        eps=f"{row.get('epsilon', math.nan):.2f}")
        if ckpt:
            _save_checkpoint(ckpt, {
                "config": cfg.model_dump(mode="json"), "epoch": epoch, "model": _module(net).state_dict(),
                "optimizer": optimizer.state_dict(), "privacy": session.state_dict() if session else None,
                "best_acc": best_acc, "best_state": best_state, "stale": stale, "history": result.history,
                "best_epoch": result.best_epoch})

    _module(net).load_state_dict(best_state)
    model.trainable = _module(net)
    model.eval()
    if session:
        result.privacy = session.ledger(epochs=len(result.history))
    result.val_inputs, result.seconds = x_va, time.time() - t0
    return result


def _module(net: nn.Module) -> nn.Module:
    """The plain module under Opacus's GradSampleModule wrapper."""
    return getattr(net, "_module", net)


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill never leaves a half-written checkpoint
