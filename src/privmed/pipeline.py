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

from privmed.config import TrainConfig, bundles_dir
from privmed.data.datasets import load_record
from privmed.data.read import load_image
from privmed.data.transforms import Preprocess
from privmed.evaluation.camera_sim import photo_of
from privmed.evaluation.metrics import classification_report
from privmed.inference import calibration as cal
from privmed.inference import intended_use, ood
from privmed.inference.bundle import read_run_log, run_dir, save_bundle, write_run_log  # noqa: F401
from privmed.inference.predictor import camera_input
from privmed.models.batched import batched_forward
from privmed.privacy.budget import Registry
from privmed.privacy.ledger import add_validation_releases, release
from privmed.privacy.randomness import SecretStream
from privmed.privacy.releases import gaussian_sum, validation_history
from privmed.training.data import unit_ids
from privmed.training.trainer import train

TASKS = {"chest_xray_pneumonia": "pneumonia", "brain_tumor_mri": "brain_tumor", "covid19_xray": "covid19",
         "covid19_ct": "covid19_ct"}
W_STAT, W_HIST = 0.6, 0.8


def _per_unit_mean(rows: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Average each unit's rows: a unit with many images still contributes one row of norm <= the bound."""
    n = int(units.max()) + 1
    out = np.zeros((n, rows.shape[1]))
    np.add.at(out, units, rows)
    return out / np.bincount(units, minlength=n)[:, None]


def validation_releases(logits: np.ndarray, emb: np.ndarray, y: np.ndarray, units: np.ndarray, k: int,
                        privacy: dict | None, data: str = "validation", means: dict | None = None,
                        camera_emb: np.ndarray | None = None,
                        ) -> tuple[dict, dict | None, dict | None, list[dict], dict]:
    """(calibration, decision, ood block, ledger releases, run-log notes) from validation data (``data``
    names it in the texts: a site calibration passes "the site sample"; each release's side stays
    "validation" for the budget registry).

    Under DP two Gaussian releases, each on per-unit rows: (1) class counts + margin histogram, and the
    OOD class means unless ``means`` (``ood.means_from_release`` of the training side's release) are
    given, (2) histogram of OOD scores, and with ``camera_emb`` (the embeddings of simulated phone photos of
    the same images, ``camera_photos``) a second histogram of theirs for the camera path's threshold, each
    at half the squared norm. Whether there are enough units for (2) and for using (1) is
    decided on (1)'s own noisy unit count, never on the exact one. Without DP the same, exact."""
    dp = privacy is not None
    sigma = validation_history(privacy["epsilon_target"], privacy["delta"], privacy["accountant"])[0][0] if dp else 0.0
    stream = SecretStream()
    # one release, rows of norm 1, each part scaled to its share W of the unit norm (sum of W^2 <= 1):
    # the margin histogram (temperature, operating point) gets the larger share
    parts = ([(ood.mean_rows(emb, y, k), ood.MEAN_SENSITIVITY, W_STAT)] if means is None else
             [(np.eye(k)[y], 1.0, W_STAT)]) + [(cal.margin_rows(logits, y, k), 1.0, W_HIST)]
    rows = np.concatenate([r * (w / sens) for r, sens, w in parts], 1)
    rel1 = gaussian_sum(_per_unit_mean(rows, units), 1.0, sigma, stream)
    out, start = [], 0
    for r, sens, w in parts:  # undo each part's scaling: (release, noise std on that scale)
        out.append((rel1[start:start + r.shape[1]] * sens / w, sigma * sens / w))
        start += r.shape[1]
    (first, _), (hist, hist_std) = out
    noisy_counts = np.maximum(first[-k:], 1.0)
    n_units = float(noisy_counts.sum()) if dp else int(units.max()) + 1
    release1 = release(f"{data}: class counts + margin histogram" + ("" if means else " + OOD class means") +
                       " (Gaussian mechanism)", sigma, on="validation", sensitivity=1.0)
    if dp and n_units < ood.MIN_UNITS:
        note = (f"{data} has about {n_units:.0f} units (DP estimate), too few for DP statistics: temperature "
                "1, argmax decision, no out-of-distribution detector (the quality gate still runs)")
        return ({"method": "none", "temperature": 1.0, "note": note}, None, None, [release1],
                {"note": note, "n_units_validation_dp": n_units})
    temperature = cal.temperature_from_histogram(cal.denoise(hist, hist_std))  # raw: unbounded as T -> 0
    how = (f"Gaussian mechanism on {data} (noise multiplier {sigma:.4g})" if dp else f"exact, on {data}")
    det = means or ood.means_from_release(first, k, emb.shape[1])
    fitted_on = means["fitted_on"] if means else f"class means: {how}"
    s, camera = ood.mean_scores(emb, det), None if camera_emb is None else ood.mean_scores(camera_emb, det)
    thresholds = _score_thresholds([s] if camera is None else [s, camera], units, sigma, stream)
    block = ood.mean_block(det, thresholds[0], f"{fitted_on}; threshold: score histogram of {data} (about "
                                               f"{n_units:.0f} units), {how}")
    if camera is not None:
        block["camera_threshold"] = thresholds[1]
        block["camera_fitted_on"] = (f"simulated phone photos of the same {data} images (evaluation.camera_sim), "
                                     "rectified as the camera path does; the same release")
    prior = noisy_counts / noisy_counts.sum()  # post-processing of release (1)'s class counts
    calibration = {"method": "temperature scaling on a histogram of true-class margins", "temperature": temperature,
                   "fitted_on": how, "class_prior": [round(float(v), 4) for v in prior]}
    decision = None
    if k == 2:
        t, _ = cal.threshold_from_histogram(hist, hist_std)  # raw noisy counts: sums over bins stay unbiased
        decision = {"positive_class_index": 1, "threshold_probability": float(1 / (1 + np.exp(-t / temperature))),
                    "threshold_margin": t,
                    "chosen_by": f"centre of the thresholds within noise of the largest balanced accuracy, {how}"}
    releases = [] if not dp else [
        release1,
        release(f"{data}: OOD score histogram (Gaussian mechanism)", sigma, on="validation", sensitivity=1.0)]
    notes = {"exact_in_sample_ood_refusal": float(np.mean(s > thresholds[0])), "n_units_validation_dp": n_units}
    return calibration, decision, block, releases, notes


def _score_thresholds(scores: list[np.ndarray], units: np.ndarray, sigma: float, stream) -> list[float]:
    """One Gaussian release of the score histograms side by side (each part scaled to norm 1/sqrt(len)),
    and the refusal threshold read off each (post-processing)."""
    w = 1 / np.sqrt(len(scores))
    rows = np.concatenate([ood.score_rows(s, ood.MEAN_EDGES) * w for s in scores], 1)
    rel = gaussian_sum(_per_unit_mean(rows, units), 1.0, sigma, stream) / w
    return [ood.threshold_from_histogram(h, noise_std=sigma / w, edges=ood.MEAN_EDGES)
            for h in np.split(rel, len(scores))]


def camera_photos(records, read=load_record, progress: bool = False):
    """Each record's image as the camera path sees a phone photo of it: a simulated capture
    (``evaluation.camera_sim``), then the rectification uploads with ``source="camera"`` get. Each photo's
    randomness comes from its own file's bytes, so a unit's photos depend on that unit alone (a shared
    generator would make them depend on who came before). Yields one at a time (full-size images)."""
    from tqdm import tqdm

    for r in tqdm(records, desc="simulated phone photos", disable=not progress, leave=False):
        photo = photo_of(read(r).pixels, Path(r.path).read_bytes())
        yield camera_input(load_image(photo.jpeg), "camera").pixels


def train_means(model, result, cfg: TrainConfig) -> dict:
    """The OOD detector's class means: one Gaussian release on the training units, after training (the
    release may depend on the DP model: composition is adaptive), planned in the training side's budget
    with the class counts (``trainer.dp_plan``). Exact without DP."""
    train = result.splits.train
    _, emb = (t.numpy() for t in batched_forward(model.trainable_forward_with_embedding, result.train_inputs))
    units, _ = unit_ids(train, result.unit)
    return ood_means_release(emb, np.array([r.label for r in train]), units.numpy(), len(result.splits.classes),
                             cfg.privacy.ood_noise if result.privacy else 0.0)


def ood_means_release(emb: np.ndarray, y: np.ndarray, units: np.ndarray, k: int, sigma: float,
                      stream: SecretStream | None = None) -> dict:
    """Class means of the embeddings' mid-level part from one Gaussian release on per-unit rows
    (sensitivity sqrt(2)); ``sigma`` 0: exact."""
    rows = _per_unit_mean(ood.mean_rows(emb, y, k), units)
    det = ood.means_from_release(gaussian_sum(rows, ood.MEAN_SENSITIVITY, sigma, stream), k, emb.shape[1])
    det["fitted_on"] = (f"class means: Gaussian mechanism on the training units (noise multiplier {sigma:g})"
                        if sigma else "class means: exact, on the training images")
    return det


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
    pre = Preprocess(cfg.preprocess)
    photos = torch.from_numpy(np.stack([pre(p) for p in camera_photos(splits.val, progress=progress)])).float()[:, None]
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
    meta = {
        "model_id": f"{TASKS.get(cfg.dataset, cfg.dataset)}-{cfg.model}-" +
                    (f"eps{cfg.privacy.epsilon:g}" if cfg.privacy.enabled else "nodp"),
        "task": TASKS.get(cfg.dataset, cfg.dataset), "dataset": cfg.dataset, "classes": splits.classes,
        "intended_use": intended_use.for_bundle({"task": TASKS.get(cfg.dataset, cfg.dataset)}),
        "model": {"name": cfg.model, "kwargs": dict(cfg.model_args)},
        "input": {"channels": 1, "height": cfg.preprocess.size, "width": cfg.preprocess.size, "range": [0, 1],
                  "color": "grayscale"},
        "preprocessing": cfg.preprocess.model_dump(),
        "training": cfg.model_dump(mode="json"),
        "released_weights": "last iterate" + (" (EMA)" if cfg.ema else "") if cfg.privacy.enabled
                            else f"best validation epoch ({result.best_epoch})",
        "privacy": privacy, "calibration": calibration, "decision": decision, "ood": ood_block,
        "run_log": "private, beside the bundle (<bundle>.run/), never released",
    }
    if not cfg.privacy.enabled:  # a non-private model: its early-stopping epoch is what an audit repeats
        meta["best_epoch"] = result.best_epoch
    save_bundle(out, model, meta)
    probs = torch.softmax(torch.from_numpy(logits) / calibration["temperature"], 1).numpy()
    ece = {"before": cal.expected_calibration_error(torch.softmax(torch.from_numpy(logits), 1).numpy(), y_val),
           "after": cal.expected_calibration_error(probs, y_val)}
    write_run_log(out, {"history": result.history, "dataset_fingerprint": splits.fingerprint,
                        "validation": classification_report(y_val, probs, splits.classes), "ece": ece,
                        "training_seconds": round(result.seconds, 1), **notes})
    shutil.rmtree(work, ignore_errors=True)
    return out
