"""Evaluate a bundle on a dataset split: the same preprocessing and calibrated probabilities
that prediction uses, batched."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from privmed.config import TrainConfig
from privmed.data.datasets import load_record, open_dataset
from privmed.errors import BundleError
from privmed.evaluation.metrics import classification_report
from privmed.inference.predictor import load_model
from privmed.training.data import test_records


def predict_records(model, records, progress: bool = True, batch: int = 32) -> np.ndarray:
    """Calibrated probabilities (N, classes) for dataset records, through the served path: each file
    decoded and preprocessed as an upload would be, then ``Model.scores`` (torch or ONNX Runtime), by
    ``Model.scores_many``."""
    from tqdm import tqdm


    pixels = (load_record(r).pixels for r in tqdm(records, desc="evaluate", disable=not progress, leave=False))
    return model.scores_many(pixels, batch)[0]


def evaluate(bundle: str | Path, dataset: str | None = None, split: str = "test", data_root: Path | None = None,
             exclude_leaked: bool = True, progress: bool = True, patient_disjoint: bool = False) -> dict:
    """Metrics on a split. ``patient_disjoint``: also drop images whose patient id occurs in train
    (chest_xray_pneumonia: 170 test ids also name training files; docs/notebook/RESULTS.md on whether they
    are the same people). ``report["private"]`` holds the counts of removed images: functions of the
    training images, kept out of the bundle by ``privmed evaluate --record``."""
    model = load_model(bundle)
    dataset = dataset or model.bundle.dataset
    cfg_kwargs = {"dataset": dataset, "exclude_leaked_test": exclude_leaked,
                  "preprocess": model.bundle.preprocess_args()}
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
    n_shared = 0
    if patient_disjoint:
        train_ids = {r.patient_id for r in ds.records("train") if r.patient_id}
        kept = [r for r in records if r.patient_id not in train_ids]
        n_shared, records = len(records) - len(kept), kept
    probs = predict_records(model, records, progress)
    report = classification_report(np.array([r.label for r in records]), probs, model.classes,
                                   pred=model.label_index(probs))
    report.update(bundle=str(bundle), model_id=model.bundle.model_id, dataset=dataset, split=split,
                  privacy=model.info["privacy"])
    # exact counts that are functions of the training images: for the data owner and the private run
    # log, never the bundle (issue 29)
    report["private"] = {"leaked_test_images_removed": n_leaked}
    if patient_disjoint:
        report["private"]["images_of_patient_ids_in_train_removed"] = n_shared
    return report
