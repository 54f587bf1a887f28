"""One prediction path: the accuracy ``privmed evaluate`` reports comes from the same decode,
preprocessing, network, temperature and decision rule that the API serves."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from privmed.api.server import Settings, create_app  # noqa: E402
from privmed.config import TrainConfig  # noqa: E402
from privmed.evaluation.evaluate import evaluate, predict_records  # noqa: E402
from privmed.evaluation.robustness import robustness  # noqa: E402
from privmed.inference import load_model  # noqa: E402
from privmed.training import data as training_data  # noqa: E402


def test_evaluate_probabilities_equal_the_apis(small_bundle, data_root, tmp_path):
    """Every image of the split ``privmed evaluate`` scores (leaked copies removed): its probabilities
    and labels equal the API's, and so does the accuracy it reports."""
    model = load_model(small_bundle)
    cfg = TrainConfig(dataset="covid19_xray", data_root=data_root, preprocess=model.metadata.get("preprocessing", {}))
    records, _ = training_data.test_records(cfg)
    probs = predict_records(model, records, progress=False)
    served_labels = []
    app = create_app(Settings(db_url=f"sqlite:///{tmp_path / 'a.db'}", bundles=[small_bundle],
                              scan_default_bundles=False))
    key = app.state.store.create_key("clinician")[1]
    with TestClient(app) as client:
        for r, p in zip(records, probs):
            res = client.post("/v1/predict", files={"file": (r.path.name, r.path.read_bytes(), "image/jpeg")},
                              headers={"Authorization": f"Bearer {key}"})
            assert res.status_code == 200
            body = res.json()
            served = body["results"][0] if "results" in body else body
            got = np.array([served["probabilities"][c] for c in model.classes])
            np.testing.assert_allclose(got, p, atol=1e-5)
            assert served["label"] == model.classes[int(model.label_index(p)[0])]
            served_labels.append(model.classes.index(served["label"]))
    report = evaluate(small_bundle, data_root=data_root, progress=False)
    assert report["n"] == len(records)
    served_accuracy = np.mean(np.array(served_labels) == [r.label for r in records])
    assert report["accuracy"] == pytest.approx(served_accuracy, abs=1e-12)


def test_robustness_clean_accuracy_is_evaluates(small_bundle, data_root):
    """robustness predicts through the same batched predictor and decision rule as evaluate."""
    report = evaluate(small_bundle, data_root=data_root, progress=False)
    rob = robustness(small_bundle, data_root=data_root, kinds=["darken"])
    assert rob["n"] == report["n"]
    assert rob["clean"]["accuracy"] == pytest.approx(report["accuracy"], abs=1e-12)
    assert rob["clean"]["auc"] == pytest.approx(report["auc"], abs=1e-9)


def test_training_and_serving_see_the_same_input_values(data_root, tmp_path, monkeypatch):
    """The training cache stores 8-bit levels; the served path (bytes -> decode -> quality gate ->
    preprocess) gives the network bit for bit the same floats, so the DP temperature, threshold and OOD
    detector fitted on cached inputs see in service what they were fitted on. The real films are stored
    at 224 x 224 (no resize), so each is also written as a 16-bit 300 x 260 PNG: a hospital's larger,
    deeper image, where the resize makes values between the levels."""
    import dataclasses

    from PIL import Image as PILImage

    from conftest import default_bundle

    bundle = default_bundle("chest_xray_pneumonia")
    if bundle is None:
        pytest.skip("the default chest bundle is not installed")
    monkeypatch.setenv("PRIVMED_CACHE", str(tmp_path / "cache"))
    model = load_model(bundle)
    cfg = TrainConfig(dataset="chest_xray_pneumonia", data_root=data_root,
                      preprocess=model.metadata.get("preprocessing", {}))
    films = training_data.test_records(cfg)[0][::150]
    records = list(films)
    for i, r in enumerate(films):
        px = model.decode(r.path.read_bytes()).pixels
        big = PILImage.fromarray((px * 65535).astype(np.uint16)).resize((300, 260), PILImage.BICUBIC)
        big.save(tmp_path / f"film{i}.png")
        records.append(dataclasses.replace(r, path=tmp_path / f"film{i}.png"))
    trained_on = training_data.pixels_to_tensor(training_data.load_pixels(records, cfg, progress=False))
    served = [model.prepare(r.path.read_bytes(), check_quality=False)[2] for r in records]
    assert len(films) >= 4 and model.decode(records[-1].path.read_bytes()).pixels.shape == (260, 300)
    for i, x in enumerate(served):
        assert torch.equal(x.reshape(trained_on[i].shape), trained_on[i]), f"image {i} differs"
    assert torch.equal(torch.round(trained_on * 255), trained_on * 255)  # 256 levels, none in between
