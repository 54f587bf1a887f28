"""REST API: auth (401/403), predict (JSON, FHIR, several files, Grad-CAM), models, metrics,
keys, and the audit log's tamper detection (rows edited and deleted directly in SQLite)."""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from privmed.api.server import Settings, create_app  # noqa: E402
from privmed.api.store import Store  # noqa: E402
from privmed.cli import main  # noqa: E402
from privmed.privacy.ledger import statement  # noqa: E402


def xray_files(data_root: Path, n: int = 2) -> list[Path]:
    return sorted((data_root / "covid19_xray" / "test").glob("*/*"))[:n]


@pytest.fixture
def api(small_bundle, tmp_path):
    db = tmp_path / "audit.db"
    app = create_app(Settings(db_url=f"sqlite:///{db}", bundles=[small_bundle], scan_default_bundles=False))
    store: Store = app.state.store
    keys = {role: store.create_key(role)[1] for role in ("clinician", "auditor", "admin")}
    with TestClient(app) as client:
        client.db, client.keys = db, keys
        yield client


def auth(client, role):
    return {"Authorization": f"Bearer {client.keys[role]}"}


def post_image(client, path: Path, role="clinician", **data):
    return client.post("/v1/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")},
                       data=data, headers=auth(client, role))


def test_health_and_metrics_are_open(api):
    r = api.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["auth"] is True
    r = api.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "# TYPE privmed_requests_total counter" in r.text


def test_auth_401_and_403(api, data_root):
    img = xray_files(data_root, 1)[0]
    assert api.get("/v1/models").status_code == 401
    r = api.post("/v1/predict", files={"file": ("a.jpeg", img.read_bytes(), "image/jpeg")})
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    r = api.get("/v1/models", headers={"Authorization": "Bearer pmk_nope_wrong"})
    assert r.status_code == 401
    assert post_image(api, img, role="auditor").status_code == 403
    r = api.get("/v1/audit", headers=auth(api, "clinician"))
    assert r.status_code == 403 and "auditor" in r.json()["detail"]
    assert api.post("/v1/keys", json={"role": "admin"}, headers=auth(api, "clinician")).status_code == 403
    assert api.get("/v1/models", headers={"X-API-Key": api.keys["clinician"]}).status_code == 200


def test_models_and_card(api, small_bundle):
    r = api.get("/v1/models", headers=auth(api, "clinician"))
    assert r.status_code == 200
    (m,) = r.json()["models"]
    assert m["runtime"] == "onnxruntime"  # loaded at start: a graph exported into the cache serves
    card = api.get(f"/v1/models/{m['id']}", headers=auth(api, "clinician")).json()
    assert card["id"] == m["id"] and card["classes"] == ["covid", "normal", "viral_pneumonia"]
    for k in ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate", "steps", "accountant",
              "unit_of_privacy"):
        assert k in card["privacy"], k
    meta = json.loads((small_bundle / "metadata.json").read_text())
    assert card["version"] == meta["weights_sha256"]
    assert m["privacy_statement"] == card["privacy_statement"] == statement(meta)
    assert api.get(f"/v1/models/{small_bundle.name}", headers=auth(api, "auditor")).status_code == 200
    r = api.get("/v1/models/nope", headers=auth(api, "clinician"))
    assert r.status_code == 404 and "unknown model" in r.json()["detail"]


def test_cli_models_says_what_the_api_says(api, small_bundle, capsys):
    """One summary behind both views: ``privmed models --json`` lists the same facts as ``/v1/models``
    (unit of privacy and neighbouring relation included), plus where the bundle lies."""
    (served,) = api.get("/v1/models", headers=auth(api, "clinician")).json()["models"]
    assert main(["models", "--dir", str(small_bundle.parent), "--json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["name"] == small_bundle.name]
    assert len(rows) == 1 and rows[0].pop("path") == str(small_bundle)
    assert rows[0] == served
    assert served["unit_of_privacy"] and served["neighbouring_relation"]


def test_predict_json_several_files_and_explain(api, data_root):
    files = xray_files(data_root, 2)
    r = api.post("/v1/predict", headers=auth(api, "clinician"), data={"explain": "true"},
                 files=[("file", (f.name, f.read_bytes(), "image/jpeg")) for f in files])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["privacy"]["epsilon"] is not None
    assert len(body["results"]) == 2
    for f, res in zip(files, body["results"]):
        assert res["input_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert abs(sum(res["probabilities"].values()) - 1) < 1e-4
        assert res["label"] in res["probabilities"]
        assert isinstance(res["abstain"], bool) and "quality" in res
        heat = res["heatmap"]
        assert len(heat) == 64 and min(map(min, heat)) >= 0 and max(map(max, heat)) <= 1


def test_predict_fhir(api, data_root, small_bundle):
    f = xray_files(data_root, 1)[0]
    r = post_image(api, f, format="fhir")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    rep = r.json()
    assert rep["resourceType"] == "DiagnosticReport" and rep["status"] in ("final", "preliminary")
    sec = rep["meta"]["security"][0]
    assert sec == {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "AIAST",
                   "display": "Artificial Intelligence asserted"}
    obs = [c for c in rep["contained"] if c["resourceType"] == "Observation"]
    assert len(obs) == 3 and len(rep["result"]) == 3
    assert abs(sum(o["valueQuantity"]["value"] for o in obs) - 1) < 1e-3
    assert all(o["meta"]["security"][0]["code"] == "AIAST" for o in obs)
    assert {x["reference"] for x in rep["result"]} == {f"#{o['id']}" for o in obs}
    assert "subject" not in rep and any(c["resourceType"] == "Device" for c in rep["contained"])
    meta = json.loads((small_bundle / "metadata.json").read_text())
    (device,) = [c for c in rep["contained"] if c["resourceType"] == "Device"]
    note = device["note"][0]["text"]
    assert note.startswith(statement(meta)) and f"unit={meta['privacy']['unit_of_privacy']}" in note
    two = api.post("/v1/predict", headers=auth(api, "clinician"), data={"format": "fhir"},
                   files=[("file", (f.name, f.read_bytes(), "image/jpeg"))] * 2).json()
    assert two["resourceType"] == "Bundle" and len(two["entry"]) == 2


def test_keys_endpoint_creates_working_key(api):
    r = api.post("/v1/keys", json={"role": "auditor", "label": "qa"}, headers=auth(api, "admin"))
    assert r.status_code == 201
    key = r.json()["key"]
    assert api.get("/v1/audit", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    listed = api.get("/v1/keys", headers=auth(api, "admin")).json()["keys"]
    assert all("key" not in k and "key_hash" not in k for k in listed)
    assert api.delete(f"/v1/keys/{r.json()['key_id']}", headers=auth(api, "admin")).status_code == 200
    assert api.get("/v1/audit", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert key not in api.db.read_bytes().decode("latin-1")  # only its salted hash is stored


def test_metrics_count_predictions(api, data_root):
    """The open /metrics counted predictions per label: polling it around one request revealed that
    request's diagnosis. Per-label counts now need an auditor or admin key (GET /v1/metrics)."""
    before = api.get("/metrics").text
    post_image(api, xray_files(data_root, 1)[0])
    text = api.get("/metrics").text
    assert 'privmed_requests_total{method="POST",route="/v1/predict",status="200"} 1' in text
    assert "privmed_request_duration_seconds_bucket" in text and "privmed_uptime_seconds" in text
    assert "privmed_predictions" not in before + text and "label=" not in text
    assert api.get("/v1/metrics").status_code == 401
    assert api.get("/v1/metrics", headers=auth(api, "clinician")).status_code == 403
    for role in ("auditor", "admin"):
        private = api.get("/v1/metrics", headers=auth(api, role))
        assert private.status_code == 200 and "privmed_predictions_total{" in private.text


def test_audit_log_records_and_detects_tampering(api, data_root, small_bundle, tmp_path):
    from privmed.cli import main

    f = xray_files(data_root, 1)[0]
    renamed = tmp_path / "Doe_Jane_1970-01-01.jpeg"  # a file name that identifies a patient
    renamed.write_bytes(f.read_bytes())
    assert post_image(api, renamed).status_code == 200
    assert api.get("/v1/models").status_code == 401
    post_image(api, renamed, format="fhir")
    rows = api.get("/v1/audit", headers=auth(api, "auditor")).json()["rows"]
    pred = next(r for r in rows if r["path"] == "/v1/predict" and r["status"] == 200)
    meta = json.loads((small_bundle / "metadata.json").read_text())
    assert pred["input_sha256"] == [hashlib.sha256(f.read_bytes()).hexdigest()]
    assert pred["model_version"] == meta["weights_sha256"] and pred["epsilon"] == meta["privacy"]["epsilon"]
    assert set(pred["output"][0]) >= {"label", "probabilities", "abstain"}
    assert pred["key_id"] and pred["latency_ms"] > 0
    assert any(r["status"] == 401 and r["key_id"] is None for r in rows)
    dump = api.db.read_bytes() + Path(str(api.db) + "-wal").read_bytes() if Path(str(api.db) + "-wal").exists() \
        else api.db.read_bytes()
    assert b"Doe_Jane" not in dump and api.keys["clinician"].encode() not in dump
    assert api.get("/v1/audit/verify", headers=auth(api, "auditor")).json()["ok"] is True
    url = f"sqlite:///{api.db}"
    assert main(["log", "verify", "--db-url", url]) == 0
    n = len(rows) + 1

    con = sqlite3.connect(api.db)
    con.execute("UPDATE audit_log SET output = replace(output, 'false', 'true') WHERE seq = 2")
    con.execute("UPDATE audit_log SET status = 500 WHERE seq = 2")
    con.commit()
    r = Store(url).verify()
    assert not r["ok"] and r["first_bad_seq"] == 2 and "edited" in r["problem"]
    assert main(["log", "verify", "--db-url", url]) == 1
    con.execute("UPDATE audit_log SET status = ? WHERE seq = 2", (rows[1]["status"],))
    con.execute("UPDATE audit_log SET output = ? WHERE seq = 2", (json.dumps(rows[1]["output"],
                sort_keys=True, separators=(",", ":")) if rows[1]["output"] is not None else None,))
    con.commit()
    assert Store(url).verify()["ok"], Store(url).verify()
    con.execute("DELETE FROM audit_log WHERE seq = 3")
    con.commit()
    r = Store(url).verify()
    assert not r["ok"] and r["first_bad_seq"] == 4 and "missing" in r["problem"]
    assert main(["log", "verify", "--db-url", url]) == 1
    last = con.execute("SELECT max(seq) FROM audit_log").fetchone()[0]
    assert last >= n - 1
    con.close()


def test_delete_from_end_is_detected(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    s = Store(url)
    for i in range(5):
        s.append(method="GET", path="/v1/models", status=200, latency_ms=1.0 + i)
    assert s.verify() == {"ok": True, "rows": 5, "last_hash": s.rows(4)[0]["row_hash"], "first_bad_seq": None,
                          "problem": None}
    con = sqlite3.connect(tmp_path / "a.db")
    con.execute("DELETE FROM audit_log WHERE seq = 5")
    con.commit()
    r = s.verify()
    assert not r["ok"] and "deleted from the end" in r["problem"]


@pytest.mark.slow
def test_uvicorn_server_and_app_remote_backend(small_bundle, data_root, tmp_path):
    """``privmed api`` as a real process; the clinician app's REST backend talks to it."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from privmed.app.backend import BackendError, RemoteBackend

    url = f"sqlite:///{tmp_path / 'a.db'}"
    key = Store(url).create_key("clinician")[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PRIVMED_BUNDLES=str(tmp_path / "none"))
    proc = subprocess.Popen([sys.executable, "-m", "privmed.cli", "api", "--port", str(port), "--bundle",
                             str(small_bundle), "--db-url", url, "--log-level", "warning"], env=env,
                            start_new_session=True)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, "privmed api exited"
                time.sleep(0.5)
        be = RemoteBackend(f"http://127.0.0.1:{port}", key)
        (card,) = be.models()
        assert card["privacy"]["epsilon"] is not None
        f = xray_files(data_root, 1)[0]
        res = be.analyse(card["id"], f.read_bytes(), f.name, explain=False)
        assert res["input_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        with pytest.raises(BackendError, match="empty"):
            be.analyse(card["id"], b"", "x.png", explain=False)
        with pytest.raises(BackendError, match="invalid"):
            RemoteBackend(f"http://127.0.0.1:{port}", "pmk_x_y").models()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)
    assert Store(url).verify()["ok"]
