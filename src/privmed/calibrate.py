"""Site calibration with differential privacy: a site's small labelled sample re-fits what a bundle
fitted on its own validation data (temperature, decision threshold, out-of-distribution reference)
and releases the site's class prior, all through the same two Gaussian releases as training's
validation side (``privacy.validation.validation_releases``), with the site's own epsilon, delta and unit.

The calibration is written beside the bundle (``<bundle>.site/site.json``, ``inference.site``), never
into it: the bundle's guarantee is unchanged, and the site's guarantee covers the site's sample. What
depends on the site's images exactly (per-class counts, the in-sample refusal rate) goes to a private
file beside it (0600), never into ``site.json``.
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import os
from pathlib import Path

import numpy as np

from privmed.data.datasets import Record, file_patient_id, fingerprint, image_files
from privmed.data.read import load_image
from privmed.errors import DatasetError, PrivmedError
from privmed.inference.predictor import Model
from privmed.inference.site import SITE_FILE, site_dir
from privmed.models.batched import batched_forward
from privmed.pipeline import camera_inputs
from privmed.privacy import ood
from privmed.privacy.accounting import DEFAULT_DELTA, epsilon_of
from privmed.privacy.budget import Registry, dataset_key
from privmed.privacy.releases import validation_history
from privmed.privacy.validation import validation_releases
from privmed.training.data import pixels_to_tensor, unit_ids

ACCOUNTANT = "prv"


def site_records(folder: Path, classes: list[str]) -> list[Record]:
    """``folder/<class>/<image>`` for the bundle's classes (all of them, each with images)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"site folder {folder} does not exist; lay it out as {folder}/<class>/<image> with "
                           f"the bundle's classes ({', '.join(classes)})")
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise DatasetError(f"{folder} has class folders the bundle does not know ({', '.join(extra)}); its classes "
                           f"are {', '.join(classes)}")
    out = []
    for label, cls in enumerate(classes):
        files = image_files(folder / cls)
        if not files:
            raise DatasetError(f"{folder / cls} is missing or holds no images: the site sample needs labelled "
                               "images of every class")
        out += [Record(p, label, file_patient_id(p)) for p in files]
    return out


def site_outputs(model: Model, pixels) -> tuple[np.ndarray, np.ndarray]:
    """(raw logits, embeddings) of decoded images (an iterable: read as needed), preprocessed as uploads
    are, 32 at a time."""
    logits, emb, it = [], [], iter(pixels)
    while chunk := list(itertools.islice(it, 32)):
        lo, em = model.logits_and_embedding(model.batch(chunk))
        logits.append(np.asarray(lo))
        emb.append(np.asarray(em))
    return np.concatenate(logits), np.concatenate(emb)


def calibrate_site(bundle: Path, records: list[Record], *, name: str, epsilon: float = 2.0,
                   delta: float = DEFAULT_DELTA, unit: str = "auto", out: Path | None = None,
                   registry: Registry | None = None, progress: bool = False) -> Path:
    """Fit and write ``<bundle>.site/site.json`` (or ``out/site.json``); returns its path."""
    model = Model(bundle, site=False)
    units, unit_name = unit_ids(records, unit)
    privacy = {"epsilon_target": epsilon, "delta": delta, "accountant": ACCOUNTANT}
    key = dataset_key(fingerprint(records))
    registry = registry or Registry()
    planned = validation_history(epsilon, delta, ACCOUNTANT)
    registry.check(key, {"validation": planned}, delta, ACCOUNTANT, split="site calibration")
    read = lambda r: load_image(r.path, **model.dicom_options())  # noqa: E731
    from tqdm import tqdm

    logits, emb = site_outputs(model, (read(r).pixels for r in tqdm(records, desc="site images", disable=not progress,
                                                                     leave=False)))
    window = json.dumps(model.dicom_options(), sort_keys=True, default=str)
    photos = camera_inputs(records, model.preprocess, read, window, progress)
    _, camera_emb = batched_forward(lambda p: model.logits_and_embedding(pixels_to_tensor(p)), photos, 32)
    camera_emb = camera_emb.numpy()
    y = np.array([r.label for r in records])
    calibration, decision, block, releases, notes = validation_releases(
        logits, emb, y, units.numpy(), len(model.classes), privacy, data="the site sample", camera_emb=camera_emb)
    if block is None:
        raise PrivmedError(f"{notes['note']}: add labelled images (at least about {ood.MIN_UNITS} {unit_name}s) "
                           "and run again; nothing was written")
    ledger = _ledger(releases, epsilon, delta, unit_name, notes["n_units_validation_dp"])
    # the registry's "validation" side; its own split label makes it compose sequentially with any other use
    as_validation = {"releases": [{**r, "on": "validation"} for r in ledger["releases"]]}
    registry.record(key, as_validation, what=f"site calibration '{name}' of {model.bundle.model_id}",
                    split="site calibration", bundle=str(bundle))
    folder = Path(out) if out else site_dir(bundle)
    doc = {"site": name, "created": dt.date.today().isoformat(), "bundle": model.bundle.model_id,
           "weights_sha256": model.bundle.weights_sha256, "calibration": calibration,
           "decision": decision, "ood": block, "privacy": ledger}
    return _write(folder, doc, {"n_images": len(records), "n_units": int(units.max()) + 1,
                                "images_per_class": np.bincount(y, minlength=len(model.classes)).tolist(),
                                **{k: v for k, v in notes.items() if k != "note"}})


def _ledger(releases: list[dict], epsilon: float, delta: float, unit: str, n_units_dp: float) -> dict:
    hist = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in releases]
    releases = [{**r, "on": "site sample"} for r in releases]
    return {"mechanism": "Gaussian mechanism, two releases on per-unit rows (pipeline.validation_releases)",
            "epsilon": round(epsilon_of(hist, delta, ACCOUNTANT), 4), "epsilon_target": epsilon, "delta": delta,
            "neighbouring_relation": "add/remove one unit (no exact count is published)",
            "unit_of_privacy": unit, "accountant": ACCOUNTANT, "releases": releases,
            "n_units_site_dp": round(float(n_units_dp), 1),
            "covers": "the site's labelled sample only; the bundle's own guarantee is unchanged"}


def _write(folder: Path, doc: dict, private: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / SITE_FILE
    path.write_text(json.dumps(doc, indent=2))
    fd = os.open(folder / "private_run_log.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"never_released": "exact statistics of the site's images", **private}, f, indent=2)
    return path
