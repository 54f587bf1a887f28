"""Evaluate a bundle on a dataset split: the same preprocessing and calibrated probabilities
that prediction uses, batched."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from privmed.config import TrainConfig
from privmed.data.datasets import open_dataset
from privmed.errors import BundleError
from privmed.evaluation.metrics import classification_report
from privmed.inference.predictor import load_model
from privmed.training.data import load_pixels, model_inputs, test_records


def predict_records(model, records, cfg: TrainConfig, progress: bool = True) -> np.ndarray:
    """Calibrated probabilities (N, classes) for dataset records."""
    x = model_inputs(model.net, load_pixels(records, cfg, progress), progress)
    with torch.no_grad():
        logits = torch.cat([model.net.trainable(x[i:i + 256]) for i in range(0, len(x), 256)])
    return torch.softmax(logits / model.temperature, 1).numpy()


def evaluate(bundle: str | Path, dataset: str | None = None, split: str = "test", data_root: Path | None = None,
             exclude_leaked: bool = True, progress: bool = True) -> dict:
    model = load_model(bundle)
    dataset = dataset or model.metadata["dataset"]
    cfg_kwargs = {"dataset": dataset, "exclude_leaked_test": exclude_leaked,
                  "preprocess": model.metadata.get("preprocessing", {})}
    if data_root:
        cfg_kwargs["data_root"] = data_root
    cfg = TrainConfig(**cfg_kwargs)
    ds = open_dataset(dataset, cfg.data_root)
    if ds.classes != model.classes:
        raise BundleError(f"bundle classes {model.classes} do not match dataset classes {ds.classes}; "
                          "evaluate it on the dataset it was trained for")
    if split == "test":
        records, n_leaked = test_records(cfg, split)
    else:
        records, n_leaked = ds.records(split), 0
    probs = predict_records(model, records, cfg, progress)
    report = classification_report(np.array([r.label for r in records]), probs, model.classes,
                                   pred=model.label_index(probs))
    report.update(bundle=str(bundle), model_id=model.metadata.get("model_id"), dataset=dataset, split=split,
                  leaked_test_images_removed=n_leaked, privacy=model.info["privacy"])
    return report
