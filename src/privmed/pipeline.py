"""Train -> calibrate -> fit the OOD detector -> write the bundle. The one function the CLI,
the Python API and the benchmarks call to produce a model."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from privmed.config import TrainConfig, bundles_dir
from privmed.evaluation.metrics import classification_report
from privmed.inference.bundle import save_bundle
from privmed.inference.calibration import expected_calibration_error, fit_temperature
from privmed.training.trainer import train

TASKS = {"chest_xray_pneumonia": "pneumonia", "brain_tumor_mri": "brain_tumor", "covid19_xray": "covid19",
         "covid19_ct": "covid19_ct"}


def calibrate(model, val_inputs: torch.Tensor, y_val: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Temperature on validation logits; returns (calibration block, logits, embeddings)."""
    with torch.no_grad():
        outs = [model.trainable_forward_with_embedding(val_inputs[i:i + 512]) for i in range(0, len(val_inputs), 512)]
    logits = torch.cat([o[0] for o in outs])
    emb = torch.cat([o[1] for o in outs])
    t = fit_temperature(logits, y_val)
    before = expected_calibration_error(torch.softmax(logits, 1).numpy(), y_val.numpy())
    after = expected_calibration_error(torch.softmax(logits / t, 1).numpy(), y_val.numpy())
    return {"method": "temperature scaling", "temperature": t, "fitted_on": "validation",
            "ece_before": before, "ece_after": after}, logits, emb


def train_bundle(cfg: TrainConfig | None = None, out: Path | str | None = None, progress: bool = True,
                 **overrides) -> Path:
    cfg = cfg or TrainConfig(**overrides)
    out = Path(out) if out else bundles_dir() / cfg.dataset
    work = out.with_name(out.name + ".partial")  # checkpoints live here until the bundle is whole
    result = train(cfg, checkpoint_dir=work, progress=progress)
    model, splits = result.model, result.splits
    y_val = torch.tensor([r.label for r in splits.val])
    calibration, logits, emb = calibrate(model, result.val_inputs, y_val)
    probs = torch.softmax(logits / calibration["temperature"], 1).numpy()
    meta = {
        "model_id": f"{TASKS.get(cfg.dataset, cfg.dataset)}-{cfg.model}-" +
                    (f"eps{cfg.privacy.epsilon:g}" if cfg.privacy.enabled else "nodp"),
        "task": TASKS.get(cfg.dataset, cfg.dataset), "dataset": cfg.dataset, "classes": splits.classes,
        "model": {"name": cfg.model, "kwargs": {}},
        "input": {"channels": 1, "height": cfg.preprocess.size, "width": cfg.preprocess.size, "range": [0, 1],
                  "color": "grayscale"},
        "preprocessing": cfg.preprocess.model_dump(),
        "training": cfg.model_dump(mode="json"),
        "history": result.history, "best_epoch": result.best_epoch, "training_seconds": round(result.seconds, 1),
        "dataset_fingerprint": splits.fingerprint,
        "metrics": {"validation": classification_report(y_val.numpy(), probs, splits.classes)},
        "privacy": result.privacy or {"mechanism": "none (non-private)", "epsilon": None},
        "calibration": calibration,
    }
    try:
        from privmed.inference.ood import fit_ood

        meta["ood"] = fit_ood(emb.numpy(), y_val.numpy(), seed=cfg.seed)
    except ImportError:
        pass
    save_bundle(out, model, meta)
    shutil.rmtree(work, ignore_errors=True)
    return out
