"""The model bundle: a directory with ``metadata.json`` and ``weights.safetensors``.

Metadata describes everything needed to use and judge the model (classes, input spec,
preprocessing, training config, metrics, data fingerprint, privacy ledger, versions). The
weights' SHA-256 is checked on every load, so a tampered bundle is refused.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from privmed.errors import BundleError
from privmed.files import atomic_write_text, sha256_file  # noqa: F401 - re-exported
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
    """Write atomically: a crash leaves either the old bundle or the new one, never half of one."""
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
        (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=False, default=str))
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


def update_metadata(path: Path, **blocks) -> dict:
    """Add or replace top-level blocks (metrics, calibration, audit...) without touching weights."""
    path = Path(path)
    meta = read_metadata(path)
    meta.update(blocks)
    atomic_write_text(path / METADATA, json.dumps(meta, indent=2, default=str))
    return meta


def read_metadata(path: Path) -> dict:
    path = Path(path)
    if not (path / METADATA).is_file():
        raise BundleError(f"{path} is not a privmed bundle (no {METADATA}); train one with `privmed train`")
    try:
        return json.loads((path / METADATA).read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path / METADATA} is not valid JSON ({e}); the bundle is damaged") from None


def _check_backbone_code(recorded: dict, current: dict) -> None:
    """Same weights run by different backbone code give different features: refuse a bundle whose
    recorded backbone code version differs from the installed one; warn for a bundle from before
    versions were recorded (its head was trained on the old features; retrain it)."""
    have = current.get("code_version")
    if not recorded or not have:
        return
    want = recorded.get("code_version")
    if want is None:
        import warnings

        warnings.warn(f"bundle predates backbone code version '{have}' (its frozen features came from an older "
                      "implementation of the backbone, which differ); retrain the bundle", stacklevel=3)
    elif want != have:
        raise BundleError(f"bundle was trained on backbone code version '{want}', installed is '{have}'; "
                          "retrain the bundle or install the privmed version it was made with")


def load_bundle(path: Path) -> tuple[SplitModel, dict]:
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"bundle format {meta.get('format_version')} is not supported (expected {FORMAT_VERSION})")
    wpath = path / WEIGHTS
    if not wpath.is_file():
        raise BundleError(f"{path} has no {WEIGHTS}; the bundle is incomplete")
    if sha256_file(wpath) != meta.get("weights_sha256"):
        raise BundleError(f"weights of {path} do not match the checksum in {METADATA}: the bundle was modified "
                          "or damaged; do not use it, re-train or restore it")
    arch = meta.get("model", {})
    if arch.get("name") not in MODELS:
        raise BundleError(f"bundle asks for unknown model '{arch.get('name')}'")
    model = get_model(arch["name"], len(meta["classes"]), **arch.get("kwargs", {}))
    want = (meta.get("backbone") or {}).get("sha256")
    if want and model.backbone.get("sha256") != want:
        raise BundleError("installed backbone weights differ from those the bundle was trained on; install "
                          f"{meta['backbone'].get('package')}")
    _check_backbone_code(meta.get("backbone") or {}, model.backbone)
    try:
        model.trainable.load_state_dict(load_file(wpath))
    except RuntimeError as e:
        n = len(meta["classes"])
        raise BundleError(f"weights do not fit model '{arch['name']}' with {n} classes: {e}") from None
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

    entries = {k: public(e) for k, e in read_metadata(bundle).get("metrics", {}).items()}
    update_metadata(bundle, metrics={**entries, key: public(metrics)})
    if not (run_dir(bundle) / "run.json").is_file():
        return None
    return write_run_log(bundle, {"metrics": {**read_run_log(bundle).get("metrics", {}), key: private}})
