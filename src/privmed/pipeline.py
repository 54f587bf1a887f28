"""Train -> private calibration, decision threshold and OOD detector on validation -> bundle +
private run log. The one function the CLI, the Python API and the benchmarks call to produce a model.

The bundle (released) holds weights, public settings and DP outputs only. The run log
(``<bundle>.run/run.json``, never released) holds what depends on private images exactly:
per-epoch losses and validation accuracy, dataset fingerprints, exact validation metrics.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

import privmed.cache as cache
from privmed.bundle.format import save_bundle, write_run_log
from privmed.bundle.metadata import build_metadata
from privmed.config import TrainConfig, bundles_dir, cache_dir
from privmed.data.datasets import load_record
from privmed.data.read import load_image
from privmed.data.transforms import Preprocess, to_uint8
from privmed.evaluation.camera_sim import photo_of
from privmed.evaluation.metrics import classification_report
from privmed.files import sha256_bytes
from privmed.inference import calibration as cal
from privmed.inference.predictor import camera_input
from privmed.models.batched import batched_forward
from privmed.privacy.budget import Registry
from privmed.privacy.ledger import add_validation_releases
from privmed.privacy.validation import ood_means_release, validation_releases
from privmed.training.data import cache_key, pixels_to_tensor, records_key, unit_ids
from privmed.training.trainer import train


def camera_photos(records, read=load_record, progress: bool = False):
    """Each record's image as the camera path sees a phone photo of it: a simulated capture
    (``evaluation.camera_sim``), then the rectification uploads with ``source="camera"`` get. Each photo's
    randomness comes from its own file's bytes, so a unit's photos depend on that unit alone (a shared
    generator would make them depend on who came before). Yields one at a time (full-size images)."""
    from tqdm import tqdm

    for r in tqdm(records, desc="simulated phone photos", disable=not progress, leave=False):
        photo = photo_of(read(r).pixels, Path(r.path).read_bytes())
        yield camera_input(load_image(photo.jpeg), "camera").pixels


# the code a simulated photo depends on: editing any of these files makes new photos, not stale hits
PHOTO_CODE = ("evaluation/camera_sim.py", "data/rectify.py", "data/read.py", "data/transforms.py")


def camera_inputs(records, pre: Preprocess, read=load_record, read_key: str = "", progress: bool = False) -> np.ndarray:
    """The preprocessed camera photos of ``records`` as (N, size, size) uint8, cached by content like the
    training pixels (the preprocessing ends on those 256 levels, so nothing is lost): each photo depends on
    its own file alone, so another recipe on the same split or a second site calibration reuses them.
    ``read_key``: what ``read`` adds to the file (e.g. a DICOM window)."""
    root = Path(__file__).resolve().parent
    code = sha256_bytes(b"".join((root / f).read_bytes() for f in PHOTO_CODE))
    path = cache_dir() / f"camera-{cache_key(records_key(records), pre.cfg.model_dump(), read_key, code)}.npy"
    hit = cache.load(path)
    if hit is not None:
        return hit
    size = pre.cfg.size
    out = np.empty((len(records), size, size), np.uint8)
    for i, p in enumerate(camera_photos(records, read, progress)):
        out[i] = to_uint8(pre(p))
    cache.save(path, out)
    return out


def train_means(model, result, cfg: TrainConfig) -> dict:
    """The OOD detector's class means: one Gaussian release on the training units, after training (the
    release may depend on the DP model: composition is adaptive), planned in the training side's budget
    with the class counts (``trainer.dp_plan``). Exact without DP."""
    train = result.splits.train
    _, emb = (t.numpy() for t in batched_forward(model.trainable_forward_with_embedding, result.train_inputs))
    units, _ = unit_ids(train, result.unit)
    return ood_means_release(emb, np.array([r.label for r in train]), units.numpy(), len(result.splits.classes),
                             cfg.privacy.ood_noise if result.privacy else 0.0)


def dataset_total(budget: dict, privacy: dict) -> dict:
    """What the dataset has spent over every run recorded in the budget registry, this one included
    (mechanism parameters only: public). The registry key stays out: it would identify the data."""
    s = Registry().summary(budget["key"], privacy["delta"], privacy["accountant"])
    return {"epsilon_all_runs": round(s["spent"], 4), "delta": s["delta"], "runs": s["runs"],
            "limit": s["limit"], "composition": s["composition"],
            "counted_since": "the first run recorded in this machine's privacy budget registry"}


def train_bundle(cfg: TrainConfig | None = None, out: Path | str | None = None, progress: bool = True,
                 **overrides) -> Path:
    cfg = cfg or TrainConfig(**overrides)
    out = Path(out) if out else bundles_dir() / cfg.dataset
    work = out.with_name(out.name + ".partial")  # checkpoints live here until the bundle is whole
    result = train(cfg, checkpoint_dir=work, progress=progress)
    model, splits = result.model, result.splits
    y_val = np.array([r.label for r in splits.val])
    logits, emb = (t.numpy() for t in batched_forward(model.trainable_forward_with_embedding, result.val_inputs))
    units, _ = unit_ids(splits.val, result.unit)
    photos = pixels_to_tensor(camera_inputs(splits.val, Preprocess(cfg.preprocess), progress=progress))
    _, camera_emb = batched_forward(model.forward_with_embedding, photos, progress=progress, desc="camera photos")
    calibration, decision, ood_block, releases, notes = validation_releases(
        logits, emb, y_val, units.numpy(), len(splits.classes), result.privacy, means=train_means(model, result, cfg),
        camera_emb=camera_emb.numpy())
    privacy = result.privacy or {"mechanism": "none (non-private)", "epsilon": None}
    if result.privacy:
        privacy = add_validation_releases(result.privacy, releases, notes.get("n_units_validation_dp"))
        privacy["dataset_budget"] = dataset_total(result.budget, privacy)
    if result.public:  # the head's public projection: public images in the clear, no epsilon spent
        privacy = {**privacy, "public_data": result.public}
    released = ("last iterate" + (" (EMA)" if cfg.ema else "") if cfg.privacy.enabled
                else f"best validation epoch ({result.best_epoch})")
    meta = build_metadata(cfg, splits.classes, released_weights=released, privacy=privacy, calibration=calibration,
                          decision=decision, ood=ood_block,
                          best_epoch=None if cfg.privacy.enabled else result.best_epoch)
    save_bundle(out, model, meta)
    probs = torch.softmax(torch.from_numpy(logits) / calibration["temperature"], 1).numpy()
    ece = {"before": cal.expected_calibration_error(torch.softmax(torch.from_numpy(logits), 1).numpy(), y_val),
           "after": cal.expected_calibration_error(probs, y_val)}
    write_run_log(out, {"history": result.history, "dataset_fingerprint": splits.fingerprint,
                        "validation": classification_report(y_val, probs, splits.classes), "ece": ece,
                        "training_seconds": round(result.seconds, 1), **notes})
    shutil.rmtree(work, ignore_errors=True)
    return out
