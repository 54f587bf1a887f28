"""int8 static quantization: calibrated on a public dataset the bundle was not trained on, written
beside the bundle (never into it), used only when accepted by the accuracy gate and while it
matches the bundle's weights and fp32 graph."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
from privmed.errors import PrivmedError  # noqa: E402
from privmed.inference.predictor import load_model  # noqa: E402


@pytest.fixture(scope="module")
def quantized_once(small_bundle, data_root, tmp_path_factory):
    """One export and one quantization (the slow part), shared: each test gets its own copy below."""
    import shutil

    from privmed.inference.onnx_export import export
    from privmed.inference.quantize import quantize_bundle

    bundle = Path(shutil.copytree(small_bundle, tmp_path_factory.mktemp("int8") / "bundle"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVMED_ONNX", "on")
        export(bundle)
        record = quantize_bundle(bundle, "chest_xray_pneumonia:train", calib_n=24, data_root=data_root,
                                 repeats=3, progress=False)
    return bundle, record


@pytest.fixture
def quantized(quantized_once, tmp_path, monkeypatch):
    """A private copy of the quantized bundle and its ``BUNDLE.local`` folder (tests rewrite the record)."""
    import shutil

    from privmed.inference.quantize import local_dir

    src, record = quantized_once
    bundle = Path(shutil.copytree(src, tmp_path / "bundle"))
    shutil.copytree(local_dir(src), local_dir(bundle))
    monkeypatch.setenv("PRIVMED_ONNX", "on")
    return bundle, record


def test_int8_record_and_artefact_stay_outside_the_bundle(quantized):
    from privmed.inference.quantize import local_dir

    bundle, r = quantized
    out = local_dir(bundle)
    assert (out / "model.int8.onnx").is_file() and (out / "int8.json").is_file()
    assert not list(bundle.glob("*int8*"))  # nothing in the released bundle
    assert "int8" not in json.loads((bundle / "metadata.json").read_text())
    assert out.stat().st_mode & 0o077 == 0  # owner-only
    assert r["calibration"] == {"source": "chest_xray_pneumonia:train", "images": 24, "private": False}
    e = r["evaluation"]
    assert e["source"] == "covid19_xray:test" and e["images"] > 0
    assert r["accepted"] == ((e["accuracy_fp32"] - e["accuracy_int8"]) * 100 <= 0.5)
    assert r["latency_ms_batch1"]["fp32"] > 0 and r["latency_ms_batch1"]["int8"] > 0


def test_int8_used_only_when_accepted_and_current(quantized, data_root, monkeypatch):
    from privmed.inference.quantize import local_dir

    bundle, r = quantized
    rec_path = local_dir(bundle) / "int8.json"
    for accepted, backend in ((True, "onnxruntime-int8"), (False, "onnxruntime")):
        rec_path.write_text(json.dumps(dict(r, accepted=accepted)))
        assert load_model(bundle).backend == backend
    rec_path.write_text(json.dumps(dict(r, accepted=True)))
    monkeypatch.setenv("PRIVMED_INT8", "off")
    assert load_model(bundle).backend == "onnxruntime"
    monkeypatch.delenv("PRIVMED_INT8")
    m = load_model(bundle)
    p = m.predict(sorted((data_root / "covid19_xray" / "test").glob("*/*"))[0])
    assert p.label in m.classes
    # an int8 graph made from another fp32 graph is never used
    rec_path.write_text(json.dumps(dict(r, accepted=True, fp32_onnx_sha256="0" * 64)))
    assert load_model(bundle).backend == "onnxruntime"


def test_calibrating_on_the_training_data_is_refused(bundle_copy, data_root):
    from privmed.inference.onnx_export import export
    from privmed.inference.quantize import quantize_bundle

    export(bundle_copy)
    with pytest.raises(PrivmedError, match="trained on"):
        quantize_bundle(bundle_copy, "covid19_xray:train", data_root=data_root, progress=False)

