"""One prediction path: the accuracy ``privmed evaluate`` reports comes from the same decode,
preprocessing, network, temperature and decision rule that the API serves."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from privmed.api.server import Settings, create_app  # noqa: E402
from privmed.data.datasets import open_dataset  # noqa: E402
from privmed.evaluation.evaluate import predict_records  # noqa: E402
from privmed.inference import load_model  # noqa: E402


def test_evaluate_probabilities_equal_the_apis(small_bundle, data_root, tmp_path):
    model = load_model(small_bundle)
    records = open_dataset("covid19_xray", data_root).records("test")[::11]
    probs = predict_records(model, records, progress=False)
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
