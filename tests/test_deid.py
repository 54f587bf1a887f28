"""De-identification of real DICOM files: every PS3.15 attribute, private tags, sequences, pseudonyms,
UIDs, dates, and bad inputs."""
from __future__ import annotations

import io
import json

import pydicom
import pytest

from hospital_corpus import fill_phi, real_dicom
from privmed.cli import main
from privmed.deid.files import deid_path
from privmed.deid.header import (
    DeidError,
    Options,
    SecretError,
    action_table,
    deidentify,
    load_secret,
    pseudonym,
    remap_uid,
)

SECRET = b"k" * 32


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_table_comes_from_the_packaged_standard():
    t = action_table()
    assert len(t) > 500  # DICOM 2026c Table E.1-1 has ~600 single-tag rows
    assert t[0x00100010] in ("Z", "D")  # PatientName
    assert t[0x0020000D] == "U"         # StudyInstanceUID
    assert t[0x00100030] in ("Z", "X")  # PatientBirthDate


@pytest.mark.parametrize("name", ["RG1_UNCI.dcm", "CT_small.dcm"])
@pytest.mark.parametrize("dates", ["remove", "shift"])
def test_no_phi_survives_anywhere(name, dates):
    ds = real_dicom(name)
    secrets = fill_phi(ds)
    original = {int(el.tag): el.value for el in ds if int(el.tag) in action_table()}
    assert len(secrets) > 300
    before = _bytes(ds)
    assert sum(s.encode() in before for s in secrets) == len(secrets)  # the corpus really holds them
    deidentify(ds, SECRET, Options(dates=dates))
    out = _bytes(ds)
    leaked = [s for s in secrets if s.encode() in out]
    assert leaked == [], f"{len(leaked)} identifying value(s) survived"
    for tag, value in original.items():  # each profile attribute is gone, emptied, dummied or remapped
        if tag in ds and ds[tag].VR not in ("SQ",) and value not in (None, "", b""):
            assert ds[tag].value != value, f"{pydicom.datadict.keyword_for_tag(tag)} kept its value"
    again = pydicom.dcmread(io.BytesIO(out))  # still a valid file
    assert again.PatientIdentityRemoved == "YES"
    codes = [c.CodeValue for c in again.DeidentificationMethodCodeSequence]
    assert "113100" in codes and (("113107" in codes) == (dates == "shift"))
    assert not any(el.tag.is_private for el in again.iterall())
    assert again.LongitudinalTemporalInformationModified == ("MODIFIED" if dates == "shift" else "REMOVED")
    assert again.pixel_array.shape == real_dicom(name).pixel_array.shape


def test_pseudonym_stable_within_a_secret_and_different_across():
    a, b = real_dicom(), real_dicom()
    pid = a.PatientID
    deidentify(a, SECRET)
    deidentify(b, SECRET)
    assert a.PatientID == b.PatientID == pseudonym(SECRET, pid) != pid
    assert a.PatientName == a.PatientID
    assert a.StudyInstanceUID == b.StudyInstanceUID  # one study stays one study
    c = real_dicom()
    deidentify(c, b"another-site-secret-0123456789")
    assert c.PatientID != a.PatientID and c.StudyInstanceUID != a.StudyInstanceUID
    other = real_dicom()
    other.PatientID = "SOMEONE-ELSE"
    deidentify(other, SECRET)
    assert other.PatientID != a.PatientID


def test_uids_keep_their_links_across_a_study():
    first, second = real_dicom(), real_dicom()
    second.SOPInstanceUID = first.SOPInstanceUID + ".2"
    study, series = first.StudyInstanceUID, first.SeriesInstanceUID
    for ds in (first, second):
        deidentify(ds, SECRET)
    assert first.StudyInstanceUID == second.StudyInstanceUID == remap_uid(SECRET, study)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID == remap_uid(SECRET, series)
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.SOPClassUID == real_dicom().SOPClassUID  # class UIDs are not identifiers
    assert first.StudyInstanceUID.startswith("2.25.")


def test_shifted_dates_keep_intervals_per_patient():
    a = real_dicom()
    a.StudyDate, a.PatientBirthDate = "20200110", "19800110"
    deidentify(a, SECRET, Options(dates="shift"))
    import datetime as dt

    d = lambda s: dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))  # noqa: E731
    assert a.StudyDate != "20200110"
    assert (d(a.StudyDate) - d(a.PatientBirthDate)).days == (d("20200110") - d("19800110")).days


def test_clean_descriptors_keeps_text_minus_identifiers():
    ds = real_dicom()
    ds.PatientName = "WILLIAMS^ROSA"
    ds.StudyDescription = "CHEST PA for Williams follow-up"
    deidentify(ds, SECRET, Options(clean_descriptors=True))
    assert "CHEST PA" in ds.StudyDescription and "WILLIAMS" not in ds.StudyDescription.upper()
    plain = real_dicom()
    plain.StudyDescription = "CHEST PA"
    deidentify(plain, SECRET)
    assert "StudyDescription" not in plain or plain.StudyDescription in ("", None)


def test_secret_is_refused_inside_the_output(tmp_path):
    with pytest.raises(SecretError, match="inside the output"):
        load_secret(tmp_path / "out" / "key", tmp_path / "out")
    key = load_secret(tmp_path / "keys" / "site.key", tmp_path / "out")
    assert len(key) == 64 and (tmp_path / "keys" / "site.key").stat().st_mode & 0o077 == 0
    assert load_secret(tmp_path / "keys" / "site.key") == key


def test_cli_deid_folder_header_only(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    ds = real_dicom("CT_small.dcm")
    secrets = fill_phi(ds, seed=3)
    ds.save_as(src / "DOE3_JANE.dcm", enforce_file_format=True)
    rc = main(["deid", str(src), str(tmp_path / "out"), "--secret-file", str(tmp_path / "site.key"),
               "--pixels", "skip", "--json"])
    printed = capsys.readouterr().out
    assert rc == 0
    r = json.loads(printed)
    assert r["written"] == 1 and r["failed"] == 0
    files = list((tmp_path / "out").iterdir())
    assert len(files) == 1 and "DOE3" not in files[0].name  # names never reuse input names
    data = files[0].read_bytes()
    assert [s for s in secrets if s.encode() in data] == []
    assert [s for s in secrets if s in printed] == []  # nor does the report


# --- bad inputs: clear error, nothing written ---------------------------------------------------------

def _run_bad(tmp_path, name: str, data: bytes, *extra):
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    (src / name).write_bytes(data)
    out = tmp_path / "out"
    r = deid_path(src, out, SECRET, Options(), *extra)
    assert r["written"] == 0 and r["failed"] == 1
    assert list(out.iterdir()) == []  # nothing half-written
    return r["failures"][0]["error"]


def test_bad_non_dicom(tmp_path):
    assert "not a DICOM file" in _run_bad(tmp_path, "scan.dcm", b"hello, not dicom" * 20)


def test_bad_dicom_without_pixels(tmp_path):
    ds = real_dicom("CT_small.dcm")
    del ds.PixelData
    assert "no pixel data" in _run_bad(tmp_path, "a.dcm", _bytes(ds))


def test_bad_compressed_without_decoder(tmp_path):
    pytest.importorskip("pydicom")
    ds = real_dicom("MR_small_jpeg_ls_lossless.dcm")
    try:
        ds.pixel_array
        pytest.skip("a JPEG-LS decoder is installed here; the no-decoder path cannot be shown")
    except Exception:
        pass
    assert "decoder" in _run_bad(tmp_path, "jls.dcm", _bytes(real_dicom("MR_small_jpeg_ls_lossless.dcm")))


def test_compressed_with_decoder_is_decompressed_and_redacted(tmp_path):
    ds = real_dicom("JPEG2000.dcm")  # Pillow's OpenJPEG decodes it
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.dcm").write_bytes(_bytes(ds))
    r = deid_path(src, tmp_path / "out", SECRET, Options())
    assert r["written"] == 1
    out = pydicom.dcmread(next((tmp_path / "out").iterdir()))
    assert not out.file_meta.TransferSyntaxUID.is_compressed and out.BurnedInAnnotation == "NO"
    assert out.pixel_array.shape == ds.pixel_array.shape


def test_burned_in_yes_without_redaction_is_refused(tmp_path):
    ds = real_dicom("CT_small.dcm")
    ds.BurnedInAnnotation = "YES"
    assert "BurnedInAnnotation" in _run_bad(tmp_path, "a.dcm", _bytes(ds), "skip")


def test_bad_dates_option():
    with pytest.raises(DeidError, match="dates"):
        deidentify(real_dicom(), SECRET, Options(dates="keep"))


def test_hospital_modules_stay_in_their_layer():
    """De-identification modules import only the layers below them (data, settings, errors, files):
    neither the faces nor the PACS layer nor inference; the CLI knows the new commands."""
    import ast
    from pathlib import Path

    import privmed

    files = sorted((Path(privmed.__file__).parent / "deid").glob("*.py"))
    assert {"header.py", "files.py", "ocr.py", "redact.py", "labelling.py"} <= {f.name for f in files}
    below = ("privmed.data", "privmed.deid", "privmed.config", "privmed.errors", "privmed.files")
    for f in files:
        tree = ast.parse(f.read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
            {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        bad = {m for m in mods if m.split(".")[0] in ("fastapi", "streamlit", "uvicorn")
               or (m.startswith("privmed") and not m.startswith(below))}
        assert not bad, f"deid/{f.name} imports {bad}"
    from privmed.cli import build_parser

    cmds = build_parser()._subparsers._group_actions[0].choices
    assert {"deid", "label", "pacs"} <= set(cmds)
