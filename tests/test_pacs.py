"""A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) on 127.0.0.1 with a temporary storage
folder: STOW, QIDO, WADO, pull with de-identification, push back, predict and store a Structured Report."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from hospital_corpus import fill_phi, real_dicom
from privmed.cli import main
from privmed.hospital.dicomweb import DICOMwebClient, PACSError

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")


def _plugin() -> str | None:
    for d in PLUGIN_DIRS:
        p = Path(d) / "libOrthancDicomWeb.so"
        if p.exists():
            return str(p)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if ORTHANC is None or _plugin() is None:
        pytest.skip("Orthanc with the DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb; "
                    ".ci/run does)")
    d = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    cfg = {"Name": "privmed-test", "StorageDirectory": str(d / "db"), "IndexDirectory": str(d / "db"),
           "HttpPort": port, "HttpBindAddress": "127.0.0.1", "RemoteAccessAllowed": False,
           "AuthenticationEnabled": False, "DicomServerEnabled": False, "Plugins": [_plugin()],
           "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (d / "orthanc.json").write_text(json.dumps(cfg))
    log = open(d / "orthanc.log", "w")
    proc = subprocess.Popen([ORTHANC, str(d / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/dicom-web"
    import httpx

    for _ in range(100):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/system", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("Orthanc did not start within 20 s: " + (d / "orthanc.log").read_text()[-500:])
    if proc.poll() is not None:
        pytest.fail("Orthanc exited: " + (d / "orthanc.log").read_text()[-500:])
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def study(orthanc):
    """A study made from the real RG1_UNCI chest radiograph with identifiers everywhere, stored by STOW."""
    ds = real_dicom("RG1_UNCI.dcm")
    secrets = fill_phi(ds, seed=7)
    # the UIDs Orthanc indexes must stay valid and distinct for the round trip
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.9.7777.7.100"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.7777.7.101"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.9.7777.7.102"
    with DICOMwebClient(orthanc) as c:
        c.store([ds])
    return ds, [s for s in secrets if not s.startswith("1.2.826.0.1.3680043.9.7777.7.10")] + \
        [ds.StudyInstanceUID, ds.SOPInstanceUID]


def test_qido_and_wado(orthanc, study):
    ds, _ = study
    with DICOMwebClient(orthanc) as c:
        found = c.search_studies(StudyInstanceUID=ds.StudyInstanceUID)
        assert len(found) == 1 and found[0]["0020000D"]["Value"][0] == ds.StudyInstanceUID
        assert len(c.search_series(ds.StudyInstanceUID)) == 1
        inst = c.search_instances(ds.StudyInstanceUID)
        assert inst[0]["00080018"]["Value"][0] == ds.SOPInstanceUID
        got = c.retrieve_study(ds.StudyInstanceUID)
        assert len(got) == 1 and got[0].PatientID == ds.PatientID
        assert (got[0].pixel_array == ds.pixel_array).all()
        one = c.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert one.SOPInstanceUID == ds.SOPInstanceUID


def test_pull_deidentifies_before_disk_then_push_back(orthanc, study, tmp_path, capsys):
    ds, secrets = study
    out = tmp_path / "pulled"
    rc = main(["pacs", "pull", "--url", orthanc, "--study", ds.StudyInstanceUID, "--out", str(out),
               "--secret-file", str(tmp_path / "site.key"), "--json"])
    printed = capsys.readouterr().out
    assert rc == 0
    files = list(out.iterdir())
    assert len(files) == 1
    data = files[0].read_bytes()
    assert [s for s in secrets if s.encode() in data] == []
    assert [s for s in secrets if s in printed] == []
    clean = pydicom.dcmread(files[0])
    assert clean.PatientIdentityRemoved == "YES" and clean.StudyInstanceUID != ds.StudyInstanceUID

    assert main(["pacs", "push", "--url", orthanc, str(out)]) == 0
    capsys.readouterr()
    with DICOMwebClient(orthanc) as c:
        back = c.search_studies(StudyInstanceUID=clean.StudyInstanceUID)
        assert len(back) == 1 and back[0]["00100020"]["Value"][0] == clean.PatientID  # the pseudonym
        again = c.retrieve_study(clean.StudyInstanceUID)[0]
    buf = __import__("io").BytesIO()
    again.save_as(buf)
    assert [s for s in secrets if s.encode() in buf.getvalue()] == []  # Orthanc opens it, still clean


def test_predict_and_store_structured_report(orthanc, study, capsys):
    from conftest import default_bundle
    from privmed.hospital.sr import DISCLAIMER, read_sr_text

    bundle = default_bundle("chest_xray_pneumonia")
    if bundle is None:
        pytest.skip("the default chest bundle is not installed")
    ds, secrets = study
    rc = main(["pacs", "predict", "--url", orthanc, "--study", ds.StudyInstanceUID, "--bundle", str(bundle),
               "--push", "--json"])
    printed = capsys.readouterr().out
    assert rc == 0
    r = json.loads(printed)
    assert r["predictions"][0]["label"] in ("normal", "pneumonia") and r["sr_stored"]
    assert not [s for s in secrets if s in printed and not s.startswith("1.2.826")]  # labels and UIDs only
    with DICOMwebClient(orthanc) as c:
        items = c.retrieve_study(ds.StudyInstanceUID)
    srs = [x for x in items if x.Modality == "SR"]
    assert len(srs) == 1 and srs[0].SOPInstanceUID == r["sr_stored"]
    text = " ".join(read_sr_text(srs[0]))
    assert DISCLAIMER in text and r["model"] in text and "epsilon" in text
    assert r["predictions"][0]["label"] in text
    ref = srs[0].CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert srs[0].PatientID == ds.PatientID  # it belongs to the patient's study in the hospital PACS


def test_unreachable_pacs_is_a_clear_error(tmp_path, capsys):
    url = f"http://127.0.0.1:{_free_port()}/dicom-web"
    rc = main(["pacs", "pull", "--url", url, "--study", "1.2.3", "--out", str(tmp_path / "o"),
               "--secret-file", str(tmp_path / "k")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the PACS" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_bad_pacs_inputs(orthanc, capsys, tmp_path):
    with pytest.raises(PACSError, match="http"):
        DICOMwebClient("127.0.0.1:8042")
    with DICOMwebClient(orthanc) as c:
        with pytest.raises(PACSError, match="UID"):
            c.retrieve_study("1.2.3; DROP")
        with pytest.raises(PACSError, match="HTTP 404"):
            c.retrieve_study("1.2.3.4.5.6.7.8.9")
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not dicom at all")
    assert main(["pacs", "push", "--url", orthanc, str(bad)]) == 2
    assert "not a DICOM file" in capsys.readouterr().err
    assert main(["pacs", "pull", "--url", orthanc, "--study", "1.2.3", "--out", str(tmp_path / "o")]) == 2
    assert "secret" in capsys.readouterr().err
