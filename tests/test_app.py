"""Streamlit clinician app through ``streamlit.testing.v1.AppTest``: renders the task selector and
model card, runs a real prediction from an uploaded X-ray, shows the abstain message, the Grad-CAM
overlay and the report downloads; the password gate; the localhost-only rule of ``privmed app``."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from privmed.app.launch import APP_FILE, check_address  # noqa: E402
from privmed.errors import PrivmedError  # noqa: E402
from privmed.privacy.ledger import statement  # noqa: E402


@pytest.fixture
def listen():
    """Set Streamlit's ``server.address`` (what ``--server.address`` sets) for the app under test."""
    from streamlit import config

    old = config.get_option("server.address")
    yield lambda address: config.set_option("server.address", address)
    config.set_option("server.address", old)


@pytest.fixture
def app_env(small_bundle, monkeypatch, tmp_path, listen):
    listen("127.0.0.1")  # as `privmed app` starts it
    monkeypatch.setenv("PRIVMED_APP_BUNDLES", str(small_bundle))
    monkeypatch.setenv("PRIVMED_BUNDLES", str(tmp_path / "none"))  # only the test bundle
    monkeypatch.delenv("PRIVMED_API_URL", raising=False)
    monkeypatch.delenv("PRIVMED_APP_PASSWORD", raising=False)
    return small_bundle


def run_app(timeout=120) -> AppTest:
    at = AppTest.from_file(str(APP_FILE), default_timeout=timeout)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [str(x.value) for x in at.info]
    parts += [w.value for w in at.warning] + [e.value for e in at.error] + [s.value for s in at.success]
    return "\n".join(parts)


def test_renders_task_selector_and_model_card(app_env):
    at = run_app()
    (sel,) = at.selectbox
    assert sel.label == "Task" and "COVID-19" in sel.value
    assert "Privacy ledger" in texts(at)
    assert statement(json.loads((app_env / "metadata.json").read_text())) in [str(x.value) for x in at.info]
    ledger = at.table[0].value
    fields = set(ledger["field"])
    assert {"epsilon (spent)", "delta", "noise multiplier", "clipping norm", "sample rate", "steps",
            "accountant", "unit of privacy"} <= fields


def test_upload_predict_gradcam_and_reports(app_env, data_root):
    f = sorted((data_root / "covid19_xray" / "test").glob("*/*"))[0]
    at = run_app()
    at.file_uploader(key="upload").set_value((f.name, f.read_bytes(), "image/jpeg"))
    at.toggle(key="gradcam").set_value(True)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(m.label.startswith("Model output") and m.value in ("covid", "normal", "viral_pneumonia")
               for m in at.metric)
    assert "Image quality" in texts(at)
    labels = [b.label for b in at.get("download_button")]
    assert "Download JSON report" in labels and "Download FHIR report" in labels
    assert "Grad-CAM overlay" in [c for img in at.get("image") for c in img.captions]


def test_noise_abstains_and_bad_file_is_explained(app_env):
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(buf, "PNG")
    at = run_app()
    at.file_uploader(key="upload").set_value([("noise.png", buf.getvalue(), "image/png"),
                                              ("notes.png", b"just text, not an image", "image/png")])
    at.run()
    assert not at.exception
    t = texts(at)
    assert "refer this image to a radiologist" in t
    assert "notes.png" in t and "not an image" in t


def test_password_gate(app_env, monkeypatch):
    monkeypatch.setenv("PRIVMED_APP_PASSWORD", "s3cret")
    at = AppTest.from_file(str(APP_FILE), default_timeout=60)
    at.run()
    assert not at.selectbox and at.text_input(key="password")
    at.text_input(key="password").set_value("wrong").run()
    assert "wrong password" in texts(at) and not at.selectbox
    at.text_input(key="password").set_value("s3cret").run()
    assert at.selectbox and at.selectbox[0].label == "Task"


def test_app_refuses_public_address_without_password():
    check_address("127.0.0.1", {})
    with pytest.raises(PrivmedError, match="PRIVMED_APP_PASSWORD"):
        check_address("0.0.0.0", {})
    check_address("0.0.0.0", {"PRIVMED_APP_PASSWORD": "x"})
    from privmed.cli import main

    assert main(["app", "--address", "0.0.0.0", "--port", "1"]) == 2


def test_app_itself_refuses_public_address_without_password(app_env, listen, monkeypatch):
    """Only ``privmed app`` checked the address: ``streamlit run streamlit_app.py --server.address
    0.0.0.0`` (or no address: every interface) served the app to the network without a login."""
    for address in ("0.0.0.0", None):
        listen(address)
        at = AppTest.from_file(str(APP_FILE), default_timeout=60)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert "refusing to listen on 0.0.0.0" in texts(at) and not at.selectbox and not at.text_input
    monkeypatch.setenv("PRIVMED_APP_PASSWORD", "s3cret")  # allowed with a password: the login is asked
    at.run()
    assert "refusing" not in texts(at) and at.text_input(key="password") and not at.selectbox
