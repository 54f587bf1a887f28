"""The typed bundle (``privmed.bundle``): every committed bundle reads through the schema without
losing a key or a value, writers refuse a malformed block before anything reaches the disk, the one
table of tasks agrees with what the bundles say, and the views (prediction summary, model card,
``/v1/models`` row) say the same things."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import default_bundle
from privmed.bundle.format import load_bundle, read_metadata, save_bundle, update_metadata
from privmed.bundle.metadata import build_metadata, model_id
from privmed.bundle.schema import BundleMetadata, migrate
from privmed.bundle.tasks import TASKS, for_task, task_of
from privmed.config import DATASETS, TrainConfig
from privmed.errors import BundleError
from privmed.files import sha256_file
from privmed.models import get_model
from support.round_trip import assert_round_trip

COMMITTED = [b for b in (default_bundle(d) for d in DATASETS) if b is not None]
needs_bundles = pytest.mark.skipif(not COMMITTED, reason="the default bundles are not installed")


@needs_bundles
@pytest.mark.parametrize("bundle", COMMITTED, ids=lambda b: b.name)
def test_committed_bundle_round_trips_and_still_verifies(bundle):
    before = {p.name: sha256_file(p) for p in bundle.iterdir() if p.is_file()}
    assert_round_trip(bundle)
    _, meta = load_bundle(bundle)  # the weights' checksum still matches
    assert isinstance(meta, BundleMetadata) and meta.ledger.private and meta.format_version == 1
    assert {p.name: sha256_file(p) for p in bundle.iterdir() if p.is_file()} == before  # nothing rewritten


@needs_bundles
@pytest.mark.parametrize("bundle", COMMITTED, ids=lambda b: b.name)
def test_the_task_table_says_what_each_bundle_says(bundle):
    meta = read_metadata(bundle)
    task = TASKS[meta.dataset]
    assert task.task == meta.task == task_of(meta.dataset) and for_task(meta.task) is task
    assert list(task.classes) == meta.classes
    assert meta.intended_use.dump() == task.intended_use
    assert meta.model_id == model_id(TrainConfig(**meta.raw["training"]))


def test_fresh_dp_bundle_round_trips(small_bundle):
    assert_round_trip(small_bundle)
    assert read_metadata(small_bundle).ledger.releases  # the DP ledger is typed: releases parsed


def test_migrate_keeps_current_documents():
    doc = {"classes": ["a", "b"], "model": {"name": "cnn"}, "privacy": {"mechanism": "none (non-private)"}}
    assert migrate(doc) is doc
    assert task_of("my_folder") == "my_folder" and for_task("my_folder") is None


def _non_private(tmp_path: Path, **blocks) -> tuple[Path, dict]:
    cfg = TrainConfig(dataset="covid19_xray", model="cnn", data_root=tmp_path, preprocess={"size": 32},
                      privacy={"enabled": False})
    classes = list(TASKS["covid19_xray"].classes)
    meta = build_metadata(cfg, classes, released_weights="best validation epoch (3)",
                          privacy={"mechanism": "none (non-private)", "epsilon": None},
                          calibration={"method": "none", "temperature": 1.0}, best_epoch=3)
    meta.update(blocks)
    return tmp_path / "nodp", meta


def test_build_metadata_and_save_bundle_write_a_non_private_bundle_that_round_trips(tmp_path):
    out, meta = _non_private(tmp_path)
    save_bundle(out, get_model("cnn", 3), meta)
    assert_round_trip(out)
    m = read_metadata(out)
    assert m.model_id == "covid19-cnn-nodp" and m.best_epoch == 3 and not m.ledger.private
    assert m.intended_use.dump() == TASKS["covid19_xray"].intended_use and m.input.height == 32
    assert list(m.raw)[:4] == ["model_id", "task", "dataset", "classes"]  # the order the file is written in


@pytest.mark.parametrize("blocks, field", [
    ({"decision": {"threshold_probabilty": 0.6}}, "decision.threshold_probability"),  # a typo'd key
    ({"ood": "yes"}, "ood"),
    ({"classes": "covid"}, "classes"),
    ({"privacy": {"epsilon": "two"}}, "privacy.epsilon"),
])
def test_save_bundle_refuses_a_malformed_block_before_writing(tmp_path, blocks, field):
    out, meta = _non_private(tmp_path, **blocks)
    with pytest.raises(BundleError, match=f"field '{field}' is invalid"):
        save_bundle(out, get_model("cnn", 3), meta)
    assert not out.exists() and not list(tmp_path.glob(".nodp.*"))  # no bundle, no half-written folder


def test_update_metadata_refuses_a_malformed_block_and_leaves_the_file(tmp_path):
    out, meta = _non_private(tmp_path)
    save_bundle(out, get_model("cnn", 3), meta)
    before = (out / "metadata.json").read_bytes()
    with pytest.raises(BundleError, match="field 'calibration.temperature' is invalid"):
        update_metadata(out, calibration={"method": "temperature scaling", "temperature": "hot"})
    assert (out / "metadata.json").read_bytes() == before
    updated = update_metadata(out, onnx={"file": "model.onnx", "faster": True, "opset": 17})
    assert updated.onnx.faster and read_metadata(out).raw["onnx"]["opset"] == 17  # unnamed keys kept


def test_a_damaged_document_names_the_field(tmp_path):
    out, meta = _non_private(tmp_path)
    save_bundle(out, get_model("cnn", 3), meta)
    bad = shutil.copytree(out, tmp_path / "bad")
    doc = json.loads((bad / "metadata.json").read_text())
    doc["model"] = {"kwargs": {}}
    (bad / "metadata.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="field 'model.name' is invalid"):
        read_metadata(bad)
    (bad / "metadata.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="not a JSON object"):
        read_metadata(bad)


@needs_bundles
def test_every_view_says_the_same_things():
    from privmed.inference.predictor import Model
    from privmed.inference.registry import Registry

    registry = Registry(COMMITTED, scan_default=False)
    for entry in registry.entries():
        row, model = registry.summary(entry), Model(entry["path"], site=False)
        card, info = model.card(entry["name"]), model.info
        ledger = read_metadata(entry["path"]).ledger
        assert row["id"] == card["id"] == info["id"] and row["version"] == card["version"] == info["weights_sha256"]
        for key in ("epsilon", "delta", "unit_of_privacy"):
            assert row[key] == card["privacy"][key] == info["privacy"][key] == getattr(ledger, key)
        assert row["privacy_statement"] == card["privacy_statement"] == info["privacy"]["statement"]
        assert row["intended_use"] == card["intended_use"] == info["intended_use"]
        assert row["neighbouring_relation"] == card["privacy"]["neighbouring_relation"]
