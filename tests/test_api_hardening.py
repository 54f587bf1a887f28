"""API hardening: auth off only on loopback, no credentials printed, bounded audit growth from
anonymous refusals, bundles verified at start (refuse to start) and later (503), signed bundles."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from privmed.api.server import Settings, create_app  # noqa: E402
from privmed.errors import BundleError, PrivmedError  # noqa: E402


def settings(tmp_path, bundles, **kw) -> Settings:
    return Settings(db_url=f"sqlite:///{tmp_path / 'a.db'}", bundles=bundles, scan_default_bundles=False, **kw)


def test_auth_off_refused_unless_loopback(tmp_path, small_bundle, monkeypatch):
    """PRIVMED_API_AUTH=off turned auth off on any host: only the CLI checked for localhost."""
    monkeypatch.setenv("PRIVMED_API_AUTH", "off")
    for host in (None, "0.0.0.0", "10.1.2.3", "example.org"):
        with pytest.raises(PrivmedError, match="without authentication"):
            create_app(Settings.from_env(db_url=f"sqlite:///{tmp_path / 'a.db'}", bundles=[small_bundle],
                                         scan_default_bundles=False, host=host))
    app = create_app(settings(tmp_path, [small_bundle], auth=False, host="127.0.0.1"))
    with TestClient(app, client=("192.168.1.9", 5000)) as remote:  # behind a proxy that forwards
        r = remote.get("/v1/models")
        assert r.status_code == 403 and "loopback" in r.json()["detail"]
    with TestClient(app, client=("::1", 5000)) as local:
        assert local.get("/v1/models").status_code == 200


def test_cli_never_prints_the_db_password(monkeypatch, capsys, small_bundle):
    """``privmed api`` printed the audit database URL with its password."""
    import privmed.api.server as server
    from privmed.cli import main

    seen = {}
    monkeypatch.setattr(server, "serve", lambda *a, **k: seen.update(k))
    url = "postgresql://audit:s3cr3t-pw@db.internal:5432/privmed"
    main(["api", "--db-url", url, "--bundle", str(small_bundle)])
    err = capsys.readouterr().err + seen["banner"]
    assert "s3cr3t-pw" not in err and "audit:***@db.internal" in err


def test_anonymous_refusals_do_not_grow_the_log_unbounded(tmp_path, small_bundle):
    """Every anonymous 401/404 was one audit row (and one fsync): 1000 requests, 1000 rows."""
    app = create_app(settings(tmp_path, [small_bundle], refusal_burst=20))
    store = app.state.store
    with TestClient(app) as c:
        for i in range(1000):
            c.get("/v1/models" if i % 2 else f"/nope/{i}")
        assert len(store.rows(0, 10_000)) <= 20
    rows = store.rows(0, 10_000)  # shutdown wrote the held counts as aggregated rows
    assert len(rows) <= 22, len(rows)
    agg = [r for r in rows if r["path"].startswith("(anonymous refusals")]
    assert sum(int(r["detail"].split()[0]) for r in agg) + (len(rows) - len(agg)) == 1000
    assert store.verify()["ok"]


def test_refusal_limiter_flushes_per_interval():
    from privmed.api.refusals import RefusalLimiter

    now = [0.0]
    lim = RefusalLimiter(burst=2, interval_s=60, clock=lambda: now[0])
    assert [lim.admit(401)[0] for _ in range(5)] == [True, True, False, False, False]
    now[0] = 61
    log_it, held = lim.admit(404)
    assert log_it and held == {401: 3} and lim.drain() == {}
    assert [lim.admit(401)[0] for _ in range(3)] == [True, True, False] and lim.due() == {}
    now[0] = 122
    assert lim.due() == {401: 1} and lim.drain() == {}


def test_bad_bundle_refuses_to_start_with_its_name(tmp_path, bundle_copy):
    """A bundle that failed to load made every predict a 500 with a traceback."""
    w = bundle_copy / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(BundleError, match=r"bundle 'bundle' .* cannot be served: .*checksum"):
        create_app(settings(tmp_path, [bundle_copy]))
    with pytest.raises(BundleError, match="not a privmed bundle"):
        create_app(settings(tmp_path, [tmp_path / "missing"]))


def test_bundle_changed_on_disk_answers_503(tmp_path, bundle_copy, data_root):
    app = create_app(settings(tmp_path, [bundle_copy], auth=False, host="127.0.0.1"))
    img = sorted((data_root / "covid19_xray" / "test").glob("*/*"))[0].read_bytes()
    with TestClient(app, client=("127.0.0.1", 1), raise_server_exceptions=False) as c:
        post = lambda: c.post("/v1/predict", files={"file": ("x.jpeg", img, "image/jpeg")})  # noqa: E731
        assert post().status_code == 200
        w = bundle_copy / "weights.safetensors"
        w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
        r = post()
        assert r.status_code == 503 and "unavailable" in r.json()["detail"] and "checksum" in r.json()["detail"]


def test_metadata_damaged_after_start_answers_503(tmp_path, bundle_copy, data_root):
    """A bundle whose metadata.json went bad after start vanished from the list: predict answered
    400/404 ("no model bundles", "unknown model") instead of saying the model is unavailable."""
    app = create_app(settings(tmp_path, [bundle_copy], auth=False, host="127.0.0.1"))
    img = sorted((data_root / "covid19_xray" / "test").glob("*/*"))[0].read_bytes()
    meta = bundle_copy / "metadata.json"
    good = meta.read_bytes()
    model_id = json.loads(good)["model_id"]
    with TestClient(app, client=("127.0.0.1", 1), raise_server_exceptions=False) as c:
        post = lambda **f: c.post("/v1/predict", files={"file": ("x.jpeg", img, "image/jpeg")}, data=f)  # noqa: E731
        assert post().status_code == 200
        for bad in (good[: len(good) // 2], b"[]"):
            meta.write_bytes(bad)
            for r in (post(), post(model=model_id)):
                assert r.status_code == 503, r.text
                assert model_id in r.json()["detail"] and "damaged" in r.json()["detail"]
            listed = c.get("/v1/models").json()["models"]
            assert [(m["id"], m["available"]) for m in listed] == [(model_id, False)]
        meta.unlink()
        assert post().status_code == 503
        meta.write_bytes(good)
        assert post().status_code == 200
        assert [m["available"] for m in c.get("/v1/models").json()["models"]] == [True]


def test_signed_bundles(tmp_path, bundle_copy, data_root):
    """The checksum sat in the same unsigned JSON: editing weights and checksum together passed."""
    from privmed.bundle.signing import verify
    from privmed.cli import main
    from privmed.files import sha256_file

    keys = tmp_path / "keys"
    assert main(["bundle", "keygen", "--out", str(keys)]) == 0
    priv, pub = keys / "privmed-bundle.key", keys / "privmed-bundle.pub"
    assert oct(priv.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(BundleError, match="not signed"):
        verify(bundle_copy, pub)
    with pytest.raises(BundleError, match="not signed"):
        create_app(settings(tmp_path, [bundle_copy], bundle_pubkey=str(pub)))
    assert main(["bundle", "sign", str(bundle_copy), "--key", str(priv)]) == 0
    assert main(["bundle", "verify", str(bundle_copy), "--pubkey", str(pub)]) == 0
    app = create_app(settings(tmp_path, [bundle_copy], bundle_pubkey=str(pub)))
    key = app.state.store.create_key("clinician")[1]
    img = sorted((data_root / "covid19_xray" / "test").glob("*/*"))[0].read_bytes()
    with TestClient(app, raise_server_exceptions=False) as c:
        post = lambda: c.post("/v1/predict", files={"file": ("x.jpeg", img, "image/jpeg")},  # noqa: E731
                              headers={"Authorization": f"Bearer {key}"})
        assert post().status_code == 200
        # the attack the checksum cannot see: new weights and a matching checksum
        w = bundle_copy / "weights.safetensors"
        w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
        meta = json.loads((bundle_copy / "metadata.json").read_text())
        meta["weights_sha256"] = sha256_file(w)
        (bundle_copy / "metadata.json").write_text(json.dumps(meta))
        r = post()
        assert r.status_code == 503 and "bad signature" in r.json()["detail"]
    assert main(["bundle", "verify", str(bundle_copy), "--pubkey", str(pub)]) == 2
    other = tmp_path / "other"
    main(["bundle", "keygen", "--out", str(other)])
    main(["bundle", "sign", str(bundle_copy), "--key", str(other / "privmed-bundle.key")])
    with pytest.raises(BundleError, match="bad signature"):
        verify(bundle_copy, pub)


def test_signed_serving_skips_the_unsigned_int8_graph(tmp_path, bundle_copy, data_root, monkeypatch):
    """With a public key set, the registry still let Model serve BUNDLE.local/model.int8.onnx, which
    no signature covers: whoever could write there chose the served graph."""
    pytest.importorskip("onnxruntime")
    from privmed.app.backend import LocalBackend
    from privmed.cli import main
    from privmed.files import sha256_file
    from privmed.inference.onnx_export import export
    from privmed.inference.predictor import load_model
    from privmed.inference.quantize import INT8_FILE, RECORD_FILE, local_dir

    monkeypatch.setenv("PRIVMED_ONNX", "on")
    export(bundle_copy)
    local = local_dir(bundle_copy)
    local.mkdir(mode=0o700)
    planted = local / INT8_FILE  # any graph, with a record that calls it accepted: nothing here is signed
    planted.write_bytes((bundle_copy / "model.onnx").read_bytes())
    meta = json.loads((bundle_copy / "metadata.json").read_text())
    (local / RECORD_FILE).write_text(json.dumps({
        "accepted": True, "weights_sha256": meta["weights_sha256"], "sha256": sha256_file(planted),
        "fp32_onnx_sha256": sha256_file(bundle_copy / "model.onnx")}))
    assert load_model(bundle_copy).backend == "onnxruntime-int8"  # without a key it is served
    keys = tmp_path / "keys"
    assert main(["bundle", "keygen", "--out", str(keys)]) == 0
    assert main(["bundle", "sign", str(bundle_copy), "--key", str(keys / "privmed-bundle.key")]) == 0
    pub = str(keys / "privmed-bundle.pub")
    app = create_app(settings(tmp_path, [bundle_copy], bundle_pubkey=pub, auth=False, host="127.0.0.1"))
    img = sorted((data_root / "covid19_xray" / "test").glob("*/*"))[0].read_bytes()
    with TestClient(app, client=("127.0.0.1", 1)) as c:
        r = c.post("/v1/predict", files={"file": ("x.jpeg", img, "image/jpeg")})
        assert r.status_code == 200 and r.json()["backend"] == "onnxruntime"  # the signed fp32 graph
    monkeypatch.setenv("PRIVMED_BUNDLE_PUBKEY", pub)  # the app follows the same rule
    reg = LocalBackend([bundle_copy]).registry
    assert reg.model(next(e for e in reg.entries() if e["path"] == bundle_copy)).backend == "onnxruntime"


def test_body_without_length_is_capped_while_streaming(tmp_path, small_bundle):
    """The body is no longer buffered whole before parsing; the size cap still holds without a
    Content-Length header (chunked upload)."""
    app = create_app(settings(tmp_path, [small_bundle], auth=False, host="127.0.0.1", max_request_bytes=2**20))

    def body():
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 65536
        yield b"\r\n--xyz--\r\n"

    with TestClient(app, client=("127.0.0.1", 1)) as c:
        r = c.post("/v1/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and "body is over the 1 MiB limit" in r.json()["detail"], r.text


def test_an_unhandled_error_is_a_logged_500_and_later_requests_chain_on(tmp_path):
    app = create_app(settings(tmp_path, []))

    def boom():
        raise RuntimeError("a bug, not for the client")

    def late():
        return {"rows_before": len(app.state.store.rows())}

    app.add_api_route("/v1/boom", boom)
    app.add_api_route("/v1/late", late)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/v1/boom")
        assert r.status_code == 500 and r.json() == {"detail": "internal error; the request was logged"}
        row = app.state.store.rows()[-1]
        assert (row["path"], row["status"], row["key_id"]) == ("/v1/boom", 500, None)
        assert client.get("/v1/late").json() == {"rows_before": 1}
        assert [(r["path"], r["status"]) for r in app.state.store.rows()] == [("/v1/boom", 500), ("/v1/late", 200)]
    assert app.state.store.verify()["ok"]
