"""One upload path: each upload decoded once with the server's size limit passed in, typed errors
mapped to statuses in one table (``api.status``), the hash computed once, the predict body declared
in the OpenAPI, ``Allow`` listing every method of a path, and the app shown the image it decoded."""
from __future__ import annotations

import io
import json
import sqlite3

import numpy as np
import pytest
from PIL import Image as PILImage

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from privmed.api.server import Settings, create_app  # noqa: E402
from privmed.api.status import STATUS, status_for  # noqa: E402
from privmed.data import read  # noqa: E402
from privmed.errors import (  # noqa: E402
    ArchiveError,
    ArchiveTooLarge,
    BundleError,
    EmptyUpload,
    ImageReadError,
    PrivacyBudgetError,
    Unavailable,
    Undecodable,
    UnsupportedFormat,
    UploadTooLarge,
    WrongModality,
)
from privmed.inference.batcher import Busy  # noqa: E402
from privmed.inference.registry import UnknownModel  # noqa: E402


def png(size: int = 96) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def client_for(tmp_path, small_bundle, **kw) -> TestClient:
    tmp_path.mkdir(parents=True, exist_ok=True)
    s = Settings.from_env(db_url=f"sqlite:///{tmp_path / 'a.db'}", bundles=[small_bundle], scan_default_bundles=False,
                          auth=False, host="127.0.0.1", **kw)
    return TestClient(create_app(s), client=("127.0.0.1", 50000))


def test_each_typed_error_has_its_status():
    expected = {ArchiveError: 400, ArchiveTooLarge: 413, EmptyUpload: 400, UploadTooLarge: 413, UnsupportedFormat: 415,
                Undecodable: 422,
                WrongModality: 422, ImageReadError: 422, UnknownModel: 404, PrivacyBudgetError: 409,
                BundleError: 503, Unavailable: 503, Busy: 503}
    for exc, status in expected.items():
        assert status_for(exc("x")) == status, exc.__name__
    assert all(issubclass(t, (Exception,)) for t in STATUS)
    with pytest.raises(TypeError):
        status_for(ValueError("not one of ours"))


@pytest.mark.parametrize("data, kind", [
    (b"", EmptyUpload),
    (b"GIF89a" + b"\0" * 64, UnsupportedFormat),
    (b"patient notes\n" * 40, UnsupportedFormat),
    (png()[:60], Undecodable),
])
def test_the_one_decoder_raises_typed_errors(data, kind):
    with pytest.raises(kind):
        read.decode_bytes(data)


def test_the_size_limit_is_the_one_passed_in():
    data = png() + b"\0" * 2048  # a real PNG, padded
    with pytest.raises(UploadTooLarge, match="over the 0 MiB limit"):
        read.decode_bytes(data, max_bytes=1024)
    assert read.decode_bytes(data, max_bytes=len(data)).pixels.shape == (96, 96)


def test_upload_over_64_mib_is_served_when_the_operator_raises_the_limit(tmp_path, small_bundle, monkeypatch):
    """PRIVMED_MAX_UPLOAD_MB=100 let the request in but the decoder's own 64 MiB cap answered 422."""
    big = png() + b"\0" * (65 * 2**20)  # 65 MiB: a real PNG, then padding the decoder ignores
    monkeypatch.setenv("PRIVMED_MAX_UPLOAD_MB", "100")
    with client_for(tmp_path / "raised", small_bundle) as c:
        r = c.post("/v1/predict", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 200, r.text[:300]
    monkeypatch.delenv("PRIVMED_MAX_UPLOAD_MB")
    with client_for(tmp_path / "default", small_bundle) as c:  # the default: 64 MiB per file
        r = c.post("/v1/predict", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "over the 64 MiB limit" in r.json()["detail"]


def test_statuses_come_from_the_table_through_the_api(tmp_path, small_bundle):
    cases = {"empty": (b"", 400), "gif": (b"GIF89a" + b"\0" * 64, 415), "truncated": (png()[:60], 422)}
    with client_for(tmp_path, small_bundle) as c:
        for name, (data, status) in cases.items():
            r = c.post("/v1/predict", files={"file": (name, data, "image/png")})
            assert r.status_code == status, (name, r.text)
        r = c.post("/v1/predict", files=[("file", ("a.png", png(), "image/png")), ("file", ("b", b"", "image/png"))])
    assert r.status_code == 400 and r.json()["detail"].startswith("file 2 of 2: the file is empty")


def test_each_upload_is_decoded_and_hashed_once(tmp_path, small_bundle, monkeypatch):
    import privmed.api.routers.predictions as predictions
    import privmed.inference.service as service

    calls = {"decode": 0, "hash": 0}
    decode, digest = read.decode_bytes, predictions.sha256_bytes

    def counting_decode(*a, **k):
        calls["decode"] += 1
        return decode(*a, **k)

    def counting_hash(data):
        calls["hash"] += 1
        return digest(data)

    monkeypatch.setattr(read, "decode_bytes", counting_decode)
    monkeypatch.setattr(predictions, "sha256_bytes", counting_hash)
    monkeypatch.setattr(service, "sha256_bytes", counting_hash)
    data = png()
    with client_for(tmp_path, small_bundle) as c:
        r = c.post("/v1/predict", files={"file": ("x.png", data, "image/png")})
    assert r.status_code == 200, r.text
    assert calls == {"decode": 1, "hash": 1}
    row = sqlite3.connect(tmp_path / "a.db").execute(
        "SELECT input_sha256 FROM audit_log WHERE path = '/v1/predict'").fetchone()
    assert json.loads(row[0]) == [r.json()["results"][0]["input_sha256"]]


def test_openapi_declares_the_predict_form(tmp_path, small_bundle):
    with client_for(tmp_path, small_bundle) as c:
        spec = c.get("/openapi.json").json()
    schema = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    props = schema["properties"]
    assert set(props) == {"file", "model", "format", "explain", "window", "frame", "redact"}
    assert schema["required"] == ["file"]
    assert props["file"]["items"] == {"type": "string", "format": "binary"}
    assert props["format"]["enum"] == ["json", "fhir"] and props["frame"]["minimum"] == 0
    key_body = spec["paths"]["/v1/keys"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert key_body["properties"]["role"]["enum"] == ["clinician", "auditor", "admin"]


def test_405_allows_every_method_of_the_path(tmp_path, small_bundle):
    """``OPTIONS /v1/keys`` answered ``Allow: POST`` although GET /v1/keys is served too."""
    with client_for(tmp_path, small_bundle) as c:
        r = c.options("/v1/keys")
        assert r.status_code == 405
        assert {"GET", "POST"} <= {m.strip() for m in r.headers["allow"].split(",")}
        r = c.put("/v1/keys/abc")
        assert r.status_code == 405 and "DELETE" in r.headers["allow"]


def test_the_app_shows_the_image_it_decoded(small_bundle, monkeypatch, tmp_path):
    from privmed.app.backend import LocalBackend, display_pixels

    monkeypatch.setenv("PRIVMED_BUNDLES", str(tmp_path / "none"))
    be = LocalBackend([small_bundle])
    (card,) = be.models()
    data = png(128)
    calls = []
    decode = read.decode_bytes
    monkeypatch.setattr(read, "decode_bytes", lambda *a, **k: calls.append(1) or decode(*a, **k))
    res, pixels = be.analyse_for_display(card["id"], data, "x.png", explain=False)
    assert len(calls) == 1 and res["label"] in card["classes"]
    monkeypatch.setattr(read, "decode_bytes", decode)
    assert np.abs(pixels - display_pixels(data, res["image"])).max() == 0
