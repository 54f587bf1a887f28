"""Site calibration with DP (issue 32, item 3): `privmed calibrate BUNDLE --site DIR` on real chest X-rays
from the public test split standing in for a site's labelled sample."""
from __future__ import annotations

import json
import shutil
import stat

import numpy as np
import pytest

from privmed.cli import main
from privmed.config import bundles_dir, default_data_root
from privmed.data.datasets import open_dataset
from privmed.errors import BundleError, PrivmedError
from privmed.inference.predictor import Model
from privmed.inference.site import site_dir
from privmed.privacy.budget import Registry


@pytest.fixture(scope="module")
def chest_test():
    from conftest import require_dataset

    root = require_dataset(default_data_root(), "chest_xray_pneumonia")
    return open_dataset("chest_xray_pneumonia", root).records("test")


@pytest.fixture
def bundle(tmp_path):
    src = bundles_dir() / "chest_xray_pneumonia"
    if not (src / "metadata.json").is_file():
        pytest.skip("no committed chest bundle")
    return shutil.copytree(src, tmp_path / "chest")


def make_site(folder, records, per_class: int):
    """SITE/<class>/<image>: the first ``per_class`` patients' images of each class (symlinks)."""
    for cls, label in (("normal", 0), ("pneumonia", 1)):
        (folder / cls).mkdir(parents=True)
        seen = set()
        for r in records:
            if r.label == label and (r.group in seen or len(seen) < per_class):
                seen.add(r.group)
                (folder / cls / r.path.name).symlink_to(r.path)
    return folder


def test_calibrate_cli_writes_dp_site_calibration_every_face_uses(bundle, chest_test, tmp_path, capsys):
    """New: a site could not re-fit the threshold, temperature or OOD reference; the shipped chest bundle's
    specificity on this split is about 0.6. The calibration is DP on the site sample, beside the bundle."""
    site = make_site(tmp_path / "site", chest_test, 90)
    assert main(["calibrate", str(bundle), "--site", str(site), "--name", "ward 7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["site"] == "ward 7" and 1.9 < out["epsilon"] <= 2.0 and out["unit_of_privacy"] == "patient"
    doc = json.loads((site_dir(bundle) / "site.json").read_text())
    p = doc["privacy"]
    assert p["neighbouring_relation"].startswith("add/remove") and p["delta"] == 1e-5
    assert all(r["noise_multiplier"] > 0 for r in p["releases"]) and len(p["releases"]) == 2
    assert all("site sample" in x for x in (doc["ood"]["fitted_on"], doc["calibration"]["fitted_on"],
                                            doc["decision"]["chosen_by"]))
    text = json.dumps(doc)
    assert "n_images" not in text and "images_per_class" not in text  # exact counts stay private
    private = site_dir(bundle) / "private_run_log.json"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and json.loads(private.read_text())["n_images"] > 0
    shipped, served = Model(bundle, site=False), Model(bundle)
    assert served.site and served.info["site_calibration"]["site"] == "ward 7"
    assert served.decision != shipped.decision and served.ood != shipped.ood
    img = chest_test[0].path
    a, b = shipped.predict(img), served.predict(img)
    assert a.model["site_calibration"] is None and b.model["site_calibration"]["epsilon"] == out["epsilon"]
    if served.temperature != shipped.temperature:
        assert not np.allclose(list(a.probabilities.values()), list(b.probabilities.values()))
    assert main(["predict", str(bundle), str(img)]) == 0
    assert "Calibrated at site 'ward 7'" in capsys.readouterr().out  # the CLI says so


def test_site_calibration_spends_the_site_budget_and_refuses_past_the_limit(bundle, chest_test, tmp_path):
    from privmed.calibrate import calibrate_site, site_records
    from privmed.data.datasets import fingerprint
    from privmed.privacy.budget import dataset_key

    site = make_site(tmp_path / "site", chest_test, 90)
    records = site_records(site, ["normal", "pneumonia"])
    reg = Registry(tmp_path / "budget")
    key = dataset_key(fingerprint(records))
    reg.set_limit(key, 2.5, 1e-5)
    calibrate_site(bundle, records, name="a", epsilon=2.0, out=tmp_path / "one", registry=reg)
    assert reg.summary(key)["runs"] == 1
    # two runs at 2 compose (PRV) to 2.94 > 2.5: refused before any image is read
    with pytest.raises(PrivmedError, match="exceeded"):
        calibrate_site(bundle, records, name="b", epsilon=2.0, out=tmp_path / "two", registry=reg)
    assert not (tmp_path / "two").exists()


def test_too_few_units_writes_nothing_and_other_weights_are_refused(bundle, chest_test, tmp_path):
    from privmed.calibrate import calibrate_site, site_records

    small = make_site(tmp_path / "small", chest_test, 15)
    with pytest.raises(PrivmedError, match="too few"):
        calibrate_site(bundle, site_records(small, ["normal", "pneumonia"]), name="x", out=tmp_path / "s",
                       registry=Registry(tmp_path / "budget"))
    assert not (tmp_path / "s" / "site.json").exists()
    folder = site_dir(bundle)
    folder.mkdir()
    (folder / "site.json").write_text(json.dumps({"calibration": {}, "decision": None, "ood": None, "privacy": {},
                                                  "weights_sha256": "0" * 64}))
    with pytest.raises(BundleError, match="other weights"):
        Model(bundle)
    with pytest.raises(PrivmedError, match="class folders the bundle does not know"):
        (tmp_path / "small" / "covid").mkdir()
        site_records(tmp_path / "small", ["normal", "pneumonia"])


def test_api_and_app_views_show_the_site_calibration(bundle, chest_test, tmp_path):
    """The API's /v1/models, /v1/models/{id}, each prediction's model and the app's model card say a
    site calibration is in use (they read the bundle's metadata and missed it before)."""
    from fastapi.testclient import TestClient

    from privmed.api.server import Settings, create_app
    from privmed.app.backend import LocalBackend
    from privmed.calibrate import calibrate_site, site_records

    app = create_app(Settings(db_url=f"sqlite:///{tmp_path / 'a.db'}", bundles=[bundle], scan_default_bundles=False))
    key = app.state.store.create_key("clinician")[1]
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
        assert client.get("/v1/models").json()["models"][0]["site_calibration"] is None
        site = make_site(tmp_path / "site", chest_test, 90)
        calibrate_site(bundle, site_records(site, ["normal", "pneumonia"]), name="ward 9",
                       registry=Registry(tmp_path / "budget"))
        listed = client.get("/v1/models").json()["models"][0]
        assert listed["site_calibration"]["site"] == "ward 9"  # picked up while serving
        one = client.get(f"/v1/models/{listed['id']}").json()
        assert one["site_calibration"]["epsilon"] == listed["site_calibration"]["epsilon"]
        img = chest_test[0].path
        r = client.post("/v1/predict", files={"file": (img.name, img.read_bytes(), "image/jpeg")})
        assert r.status_code == 200 and r.json()["model"]["site_calibration"]["site"] == "ward 9"
    cards = LocalBackend(bundles=[bundle]).models()
    assert [c["site_calibration"]["site"] for c in cards if c["name"] == bundle.name] == ["ward 9"]


def _zip(folder, top: str = "") -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(folder.glob("*/*")):
            z.write(f, f"{top}{f.parent.name}/{f.name}")
        z.writestr("__MACOSX/normal/._x.jpeg", b"resource fork")  # skipped, as macOS zips carry them
    return buf.getvalue()


def test_admin_calibrates_a_site_through_the_api_and_the_images_are_not_kept(bundle, chest_test, tmp_path,
                                                                             monkeypatch):
    """Issue 32, item 3 through the API: an admin uploads the site's labelled sample as a zip; only an admin
    may; a broken archive, a wrong layout or a wrong content type get a clear 4xx and write nothing; the
    unpacked images are deleted when the calibration ends, and every face then uses it."""
    import tempfile

    from fastapi.testclient import TestClient

    from privmed.api.server import Settings, create_app

    monkeypatch.setenv("PRIVMED_BUDGET_DIR", str(tmp_path / "budget"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    app = create_app(Settings(db_url=f"sqlite:///{tmp_path / 'a.db'}", bundles=[bundle], scan_default_bundles=False))
    admin, clinician = (app.state.store.create_key(r)[1] for r in ("admin", "clinician"))
    body = _zip(make_site(tmp_path / "site", chest_test, 70), top="sample/")
    url = "/v1/models/chest/site-calibration"
    zipped = {"Content-Type": "application/zip"}
    with TestClient(app) as client:
        as_admin = {"Authorization": f"Bearer {admin}", **zipped}
        assert client.post(url, params={"name": "ward 4"}, content=body,
                           headers={"Authorization": f"Bearer {clinician}", **zipped}).status_code == 403
        r = client.post(url, params={"name": "ward 4"}, content=b"not a zip", headers=as_admin)
        assert r.status_code == 400 and "not a zip" in r.json()["detail"]
        r = client.post(url, params={"name": "ward 4"}, content=body, headers={**as_admin, "Content-Type": "image/png"})
        assert r.status_code == 415
        r = client.post(url, params={"name": "ward 4"}, content=_zip(tmp_path / "site", top="a/b/"), headers=as_admin)
        assert r.status_code == 400 and "<class>/<image>" in r.json()["detail"]
        r = client.post(url, params={"name": "../x"}, content=body, headers=as_admin)
        assert r.status_code == 400 and "'name'" in r.json()["detail"]
        assert not site_dir(bundle).exists()
        r = client.post(url, params={"name": "ward 4", "epsilon": 1.5}, content=body, headers=as_admin)
        assert r.status_code == 201, r.text
        out = r.json()
        assert out["site"] == "ward 4" and 1.4 < out["epsilon"] <= 1.5 and out["unit_of_privacy"] == "patient"
        listed = client.get("/v1/models", headers={"Authorization": f"Bearer {clinician}"}).json()["models"][0]
        assert listed["site_calibration"]["site"] == "ward 4"
    assert list((tmp_path / "tmp").iterdir()) == []  # the unpacked sample is gone
    assert (site_dir(bundle) / "site.json").is_file()
