"""Intended use as data, enforced (issue 32): a DICOM whose header puts it outside the population or
acquisition a task was trained on is refused with the reason, on every face, unless the site has
calibrated. Real DICOM files (pydicom's chest CR, header tags edited) through the committed
``bundles/chest_xray_pneumonia``."""
from __future__ import annotations

import json
import warnings

import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import default_bundle
from privmed.bundle.schema import BundleMetadata
from privmed.config import DATASETS, settings
from privmed.data.read import load_image
from privmed.inference import intended_use
from privmed.inference.intended_use import PREFIX, TABLE, check, for_bundle

BUNDLE = default_bundle("chest_xray_pneumonia")
needs_bundle = pytest.mark.skipif(BUNDLE is None, reason="bundles/chest_xray_pneumonia not installed")
PATIENT_TAGS = ("PatientAge", "PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


def _base():
    """pydicom-data's real chest CR (PA, CHEST); else pydicom's own CT_small labelled a radiograph."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file("RG1_UNCI.dcm", download=False)
        if path:
            return pydicom.dcmread(path)
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    return ds


def film(tmp_path, name="film.dcm", **tags):
    """A chest DICOM with no age facts but ``tags`` (a value None deletes the tag)."""
    ds = _base()
    for tag in PATIENT_TAGS:
        if tag in ds:
            delattr(ds, tag)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # malformed values are written on purpose
        for tag, value in tags.items():
            if value is not None:
                setattr(ds, tag, value)
            elif tag in ds:
                delattr(ds, tag)
        path = tmp_path / name
        ds.save_as(path)
    return path


def intended_reasons(pred) -> list[str]:
    return [r for r in pred.abstain_reasons if r.startswith(PREFIX)]


@pytest.fixture(scope="module")
def model():
    if BUNDLE is None:
        pytest.skip("bundles/chest_xray_pneumonia not installed")
    from privmed.inference import load_model

    m = load_model("chest_xray_pneumonia")
    m.site = None  # the table governs here, even if a site calibration lies beside the bundle
    return m


# ---------- the table and the reader of old bundles

def test_table_covers_every_task_and_pneumonia_states_its_population():
    from privmed.bundle.tasks import TASKS

    assert {t.task for t in TASKS.values()} == set(TABLE) and set(TASKS) == set(DATASETS)
    chest = TABLE["pneumonia"]
    assert chest["age_years"] == [1, 5] and chest["views"] == ["AP", "PA"] and "CHEST" in chest["body_parts"]
    assert "Guangzhou Women and Children's Medical Center" in chest["source"]
    assert all(TABLE[t]["age_years"] is None for t in ("brain_tumor", "covid19", "covid19_ct"))  # not stated


@needs_bundle
def test_old_bundle_gets_the_table_entry_and_a_bundle_block_wins():
    meta = json.loads((BUNDLE / "metadata.json").read_text())
    meta.pop("intended_use", None)  # as written before the block existed (bundles are not rewritten)
    assert for_bundle(BundleMetadata.parse(meta)) == TABLE["pneumonia"]
    own = {**TABLE["pneumonia"], "age_years": [0, 17], "population": "children, site X"}
    assert for_bundle(BundleMetadata.parse({**meta, "intended_use": own})) == own
    assert for_bundle(BundleMetadata.parse({**meta, "task": "unknown"})) is None
    assert check({"header": {"age_years": 40.0}}, None) == []


def test_new_bundles_carry_the_block(small_bundle):
    if settings().test_bundle:
        pytest.skip("PRIVMED_TEST_BUNDLE reuses an existing bundle: not made by this pipeline")
    meta = json.loads((small_bundle / "metadata.json").read_text())
    assert meta["intended_use"] == TABLE["covid19"]


# ---------- the header facts and the check

@pytest.mark.parametrize("age, years", [("045Y", 45.0), ("006M", 0.5), ("010D", 0.03), ("002W", 0.04),
                                        ("4X5Y", None), ("", None), ("000Y", None)])
def test_patient_age_is_read_or_ignored(tmp_path, age, years):
    meta = load_image(film(tmp_path, PatientAge=age)).meta
    assert meta["header"]["age_years"] == years and meta["header"]["view"] == "PA"


def test_age_from_birth_and_study_dates_and_bad_dates_ignored(tmp_path):
    h = load_image(film(tmp_path, PatientBirthDate="19790101", StudyDate="20240315")).meta["header"]
    assert 45 <= h["age_years"] < 46
    h = load_image(film(tmp_path, PatientBirthDate="20200601", SeriesDate="20230701")).meta["header"]
    assert 3 <= h["age_years"] < 4  # no StudyDate: the series date
    for birth, study in (("1979-01-01", "20240315"), ("19790132", "20240315"), ("20250101", "20240315")):
        assert load_image(film(tmp_path, PatientBirthDate=birth, StudyDate=study)).meta["header"]["age_years"] is None


def test_check_is_categorical_and_does_not_echo_free_text():
    chest = TABLE["pneumonia"]
    assert check({"header": {"age_years": 3.5, "view": "AP", "body_part": "chest"}}, chest) == []
    assert check({"header": {"age_years": 5.9}}, chest) == []  # "1-5": completed years
    assert "younger than" in check({"header": {"age_years": 0.5}}, chest)[0]
    assert "older than the intended ages" in check({"header": {"age_years": 9.0}}, chest)[0]
    (r,) = check({"header": {"view": "LATERAL OF MR SMITH, BORN 1950"}}, chest)
    assert "an unrecognised value" in r and "SMITH" not in r and "1950" not in r
    assert check({"format": "png"}, chest) == [] and check({"header": {}}, chest) == []


# ---------- enforced in the one prediction path

@needs_bundle
def test_adult_chest_is_refused_with_the_reason(model, tmp_path):
    for path in (film(tmp_path, "a.dcm", PatientAge="045Y", StudyDate="20240315"),
                 film(tmp_path, "b.dcm", PatientBirthDate="19790101", StudyDate="20240315")):
        pred = model.predict(path)
        (reason,) = intended_reasons(pred)
        assert pred.abstain and "adult patient (18 years or older)" in reason and "aged 1-5 years" in reason
        for secret in ("45", "1979", "2024", "0315", "0101"):  # no age, no date
            assert secret not in reason
        out = json.dumps(pred.to_dict())
        assert "header" not in (pred.dicom or {}) and "19790101" not in out and "20240315" not in out
        assert pred.model["intended_use"] == TABLE["pneumonia"]


@needs_bundle
def test_three_year_old_ap_passes_and_view_and_body_part_refuse(model, tmp_path):
    assert intended_reasons(model.predict(film(tmp_path, PatientAge="003Y", ViewPosition="AP"))) == []
    (r,) = intended_reasons(model.predict(film(tmp_path, PatientAge="003Y", ViewPosition="LL")))
    assert "ViewPosition is LL" in r and "AP/PA" in r
    (r,) = intended_reasons(model.predict(film(tmp_path, PatientAge="003Y", BodyPartExamined="HEAD")))
    assert "BodyPartExamined is HEAD" in r
    assert intended_reasons(model.predict(film(tmp_path, PatientAge="003Y", BodyPartExamined=None))) == []


@needs_bundle
def test_malformed_age_and_png_are_not_refused(model, tmp_path):
    assert intended_reasons(model.predict(film(tmp_path, PatientAge="4X5Y"))) == []
    png = tmp_path / "film.png"
    from PIL import Image

    Image.fromarray((load_image(film(tmp_path)).pixels * 255).astype("uint8")).save(png)
    pred = model.predict(png)
    assert intended_reasons(pred) == [] and pred.model["intended_use"]["age_years"] == [1, 5]


@needs_bundle
def test_site_calibration_governs(model, tmp_path):
    path = film(tmp_path, PatientAge="045Y")
    try:
        # a site calibration exists (as ``inference.site`` loads one): it, not the table, governs
        model.site = {"site": "adult hospital", "created": "2025-01-01", "calibration": {},
                      "decision": model.decision, "ood": model.ood,
                      "privacy": {"epsilon": 2.0, "delta": 1e-5, "unit_of_privacy": "patient"}}
        assert intended_reasons(model.predict(path)) == []
    finally:
        model.site = None
    assert intended_reasons(model.predict(path))


# ---------- every face

@pytest.fixture
def client(tmp_path):
    if BUNDLE is None:
        pytest.skip("bundles/chest_xray_pneumonia not installed")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from privmed.api.server import Settings, create_app

    app = create_app(Settings(db_url=f"sqlite:///{tmp_path / 'audit.db'}", bundles=[BUNDLE],
                              scan_default_bundles=False, auth=False, host="127.0.0.1"))
    with TestClient(app, client=("127.0.0.1", 5000)) as c:  # auth off answers loopback only
        yield c


def test_api_json_fhir_and_models_name_the_reason(client, tmp_path):
    data = film(tmp_path, PatientAge="045Y").read_bytes()
    r = client.post("/v1/predict", files={"file": ("adult.dcm", data, "application/dicom")})
    assert r.status_code == 200, r.text
    body = r.json()
    res = body["results"][0]
    assert res["abstain"] and any("adult patient" in x for x in res["abstain_reasons"])
    assert "header" not in res["image"] and "header" not in (res["dicom"] or {})
    assert body["model"]["intended_use"]["age_years"] == [1, 5]
    r = client.post("/v1/predict", files={"file": ("adult.dcm", data, "application/dicom")}, data={"format": "fhir"})
    report = r.json()
    assert report["status"] == "preliminary" and "adult patient (18 years or older)" in report["conclusion"]
    notes = [n["text"] for n in report["contained"][0]["note"]]
    assert any(n.startswith("intended use: paediatric patients aged 1-5 years") for n in notes)
    (m,) = client.get("/v1/models").json()["models"]
    assert m["intended_use"] == TABLE["pneumonia"]
    assert client.get(f"/v1/models/{m['id']}").json()["intended_use"] == TABLE["pneumonia"]


@needs_bundle
def test_cli_prints_the_reason_and_the_intended_use(tmp_path, capsys):
    from privmed.cli import main

    path = film(tmp_path, PatientAge="045Y")
    assert main(["predict", str(BUNDLE), str(path), "--json"]) == 0
    (res,) = json.loads(capsys.readouterr().out)
    assert any("adult patient" in x for x in res["abstain_reasons"])
    assert res["model"]["intended_use"]["population"].startswith("paediatric")
    assert main(["predict", str(BUNDLE), str(path)]) == 0
    out = capsys.readouterr().out
    assert "intended use: paediatric patients aged 1-5 years" in out and "ABSTAIN: outside intended use" in out


@needs_bundle
def test_app_shows_the_intended_use_and_the_reason(tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    from privmed.app.launch import APP_FILE

    old = config.get_option("server.address")
    config.set_option("server.address", "127.0.0.1")
    monkeypatch.setenv("PRIVMED_APP_BUNDLES", str(BUNDLE))
    monkeypatch.setenv("PRIVMED_BUNDLES", str(tmp_path / "none"))
    for var in ("PRIVMED_API_URL", "PRIVMED_APP_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    try:
        at = AppTest.from_file(str(APP_FILE), default_timeout=120)
        at.run()
        assert any(c.value.startswith("Intended use: paediatric patients aged 1-5") for c in at.sidebar.caption)
        at.file_uploader(key="upload").set_value(("adult.dcm", film(tmp_path, PatientAge="045Y").read_bytes(),
                                                  "application/dicom"))
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert any("adult patient (18 years or older)" in w.value for w in at.warning)
    finally:
        config.set_option("server.address", old)


def test_describe_names_population_acquisition_and_source():
    text = intended_use.describe(TABLE["pneumonia"])
    assert "aged 1-5 years" in text and "anterior-posterior" in text and "Guangzhou" in text
    assert intended_use.describe(None) == "intended use not stated"
