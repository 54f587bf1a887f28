"""DICOM decoding on pydicom's real test files: display pipeline, colour, errors, no patient ids."""
import json
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import DATA_ROOT, external_data_sources

from privmed.data import dicom
from privmed.data.dicom import read_dicom
from privmed.data.read import decode_bytes, load_image
from privmed.errors import ImageReadError

BIG = 50_000_000
SAFE_KEYS = {
    "format", "modality", "photometric_interpretation", "rows", "cols", "width", "height", "bits_stored",
    "transfer_syntax_uid", "transfer_syntax", "body_part", "voi", "inverted",
    "converted_to_gray_from", "window", "rescale", "frames", "frame",
    "header",  # age in years, view, body part: for the intended-use check, never in an output
}


def _file(name):
    path = get_testdata_file(name, download=False)  # never touch the network
    if path is None:
        pytest.skip(f"{name} not shipped with this pydicom / pydicom-data")
    return path


def _local_test_files():
    """pydicom's and pydicom-data's files on disk (get_testdata_files would try to download more)."""
    dirs = [Path(DATA_ROOT) / "test_files"] + [Path(s.data_path) for s in external_data_sources().values()]
    return sorted(p for d in dirs for p in d.glob("*.dcm"))


def _raw(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(_file(name))


def _decoder_available(uid) -> bool:
    from pydicom.pixels import get_decoder

    return get_decoder(uid).is_available


def test_monochrome1_chest_radiograph_is_inverted():
    px, meta = read_dicom(open(_file("RG1_UNCI.dcm"), "rb").read(), BIG)
    ds = _raw("RG1_UNCI.dcm")
    assert px.dtype == np.float32 and px.shape == (1955, 1841)
    assert 0.0 <= px.min() and px.max() <= 1.0
    assert meta["photometric_interpretation"] == "MONOCHROME1" and meta["inverted"] is True
    assert meta["voi"] == "window" and meta["modality"] == "CR" and meta["body_part"] == "CHEST"
    # MONOCHROME1 stores dense tissue as low values: after inversion the output must fall as raw rises
    raw = ds.pixel_array.astype(np.float64)
    assert np.corrcoef(raw[::8, ::8].ravel(), px[::8, ::8].ravel())[0, 1] < -0.95
    # and the lungs (left/right of centre) come out darker than the spine between them
    h, w = px.shape
    band = px[int(0.35 * h):int(0.55 * h)]
    lungs = (band[:, int(0.2 * w):int(0.35 * w)].mean() + band[:, int(0.65 * w):int(0.8 * w)].mean()) / 2
    spine = band[:, int(0.47 * w):int(0.53 * w)].mean()
    assert lungs < spine - 0.1, (lungs, spine)


def test_window_matches_dicom_formula_after_rescale():
    """693_UNCI is a CT with rescale slope/intercept and window 40/100 (HU)."""
    ds = _raw("693_UNCI.dcm")
    px, meta = read_dicom(_file("693_UNCI.dcm"), BIG)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = np.clip((hu - (c - 0.5)) / (w - 1) + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1 linear
    assert meta["voi"] == "window"
    np.testing.assert_allclose(px, expected, atol=1e-5)
    assert (px == 0).mean() > 0.05 and (px == 1).mean() > 0.01  # air and bone saturate in a brain window


def test_mr_window_and_ct_min_max():
    ds = _raw("MR_small.dcm")
    px, meta = read_dicom(_file("MR_small.dcm"), BIG)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    np.testing.assert_allclose(px, np.clip((ds.pixel_array - (c - 0.5)) / (w - 1) + 0.5, 0, 1), atol=1e-5)
    ct, meta = read_dicom(_file("CT_small.dcm"), BIG)  # no window: the data's own range
    assert meta["voi"] == "min_max" and ct.min() == 0.0 and ct.max() == 1.0 and meta["modality"] == "CT"


def test_voi_lut_sequence_is_used():
    px, meta = read_dicom(_file("vlut_04.dcm"), BIG)
    assert meta["voi"] == "voi_lut" and 0 <= px.min() and px.max() <= 1 and px.std() > 0.05


def test_jpeg2000_decodes_when_a_plugin_is_installed():
    ds = _raw("JPEG2000.dcm")
    if not _decoder_available(ds.file_meta.TransferSyntaxUID):
        pytest.skip("no JPEG 2000 decoder installed")
    px, meta = read_dicom(_file("JPEG2000.dcm"), BIG)
    assert px.shape == (1024, 256) and meta["transfer_syntax"].startswith("JPEG 2000")


def test_compressed_without_decoder_names_syntax_and_packages():
    ds = _raw("JPEG-LL.dcm")
    if _decoder_available(ds.file_meta.TransferSyntaxUID):
        pytest.skip("a JPEG Lossless decoder is installed here")
    with pytest.raises(ImageReadError) as e:
        read_dicom(_file("JPEG-LL.dcm"), BIG)
    msg = str(e.value)
    assert "JPEG Lossless" in msg and "1.2.840.10008.1.2.4.70" in msg
    assert "pylibjpeg-libjpeg" in msg and "python-gdcm" in msg


def test_rgb_is_converted_to_gray_and_said_so():
    ds = _raw("SC_rgb.dcm")
    px, meta = read_dicom(_file("SC_rgb.dcm"), BIG)
    expected = ds.pixel_array.astype(np.float64) @ [0.299, 0.587, 0.114] / 255.0
    assert px.shape == (100, 100) and meta["converted_to_gray_from"] == "RGB"
    np.testing.assert_allclose(px, expected, atol=1e-5)
    ybr, meta = read_dicom(_file("SC_ybr_full_uncompressed.dcm"), BIG)  # same picture stored as YBR
    assert meta["converted_to_gray_from"] == "YBR_FULL"
    assert np.abs(ybr - px).max() < 0.03


def test_multi_frame_is_refused_with_frame_count():
    with pytest.raises(ImageReadError, match="10 frames"):
        read_dicom(_file("emri_small.dcm"), BIG)


def test_pixel_limit_is_checked_before_decoding(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pixel data was decoded before the size check")

    monkeypatch.setattr(dicom, "_decode", boom)
    with pytest.raises(ImageReadError, match="over the 1,000,000 limit"):
        read_dicom(_file("RG1_UNCI.dcm"), 1_000_000)


@pytest.mark.parametrize("name, pattern", [
    ("rtplan.dcm", "no pixel data"),
    ("MR_truncated.dcm", "truncated or corrupt"),
])
def test_non_image_and_truncated(name, pattern):
    with pytest.raises(ImageReadError, match=pattern):
        read_dicom(_file(name), BIG)


def test_garbage_and_cut_files_raise_image_read_error():
    with pytest.raises(ImageReadError):
        read_dicom(b"\x00" * 128 + b"DICM" + b"\xff" * 300, BIG)
    data = open(_file("RG1_UNCI.dcm"), "rb").read()
    with pytest.raises(ImageReadError, match="truncated|corrupt"):
        decode_bytes(data[: len(data) // 2])  # through read.py's format sniffing


def test_read_py_routes_dicom_bytes_and_paths():
    img = load_image(_file("CT_small.dcm"))
    assert img.meta["format"] == "dicom" and img.pixels.shape == (128, 128)
    img2 = decode_bytes(open(_file("CT_small.dcm"), "rb").read())
    np.testing.assert_array_equal(img.pixels, img2.pixels)


def test_metadata_has_no_patient_identifiers():
    ds = _raw("RG1_UNCI.dcm")
    _, meta = read_dicom(_file("RG1_UNCI.dcm"), BIG)
    assert set(meta) <= SAFE_KEYS
    text = json.dumps(meta)
    for tag in ("PatientID", "PatientName", "PatientBirthDate", "StudyDate", "InstitutionName"):
        value = str(ds.get(tag) or "")
        if len(value) > 2:
            assert value not in text, tag
    # was a fixed-salt sha256 of PatientID: anyone with the salt (in the source) enumerates short ids
    assert "patient_id_hash" not in meta and str(ds.PatientID) and ds.PatientID not in text


def test_every_shipped_test_file_decodes_or_raises_image_read_error():
    """No pydicom exception type may escape: the API turns ImageReadError into a 4xx."""
    outcomes = {"ok": 0, "refused": 0}
    for path in _local_test_files():
        try:
            px, meta = read_dicom(path, BIG)
        except ImageReadError:
            outcomes["refused"] += 1
            continue
        assert px.ndim == 2 and px.dtype == np.float32 and np.isfinite(px).all()
        assert 0.0 <= px.min() and px.max() <= 1.0
        assert set(meta) <= SAFE_KEYS
        outcomes["ok"] += 1
    print(outcomes)
    assert outcomes["ok"] >= 40


def test_dicom_patient_split_is_disjoint_stable_across_processes_and_hides_ids(tmp_path):
    """PatientID groups a DICOM folder's split by patient; the key must be the same in a fresh
    process (a resumed run or `privmed privacy audit` must see the same validation split) and
    the raw PatientID must never sit in a record."""
    import subprocess
    import sys

    from pydicom.uid import generate_uid

    from privmed.data.datasets import open_dataset, train_val_split

    ids = {}  # file -> raw PatientID, ground truth read back from the files below
    for cls, template in (("ct", "CT_small.dcm"), ("mr", "MR_small.dcm")):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for p in range(10):
            pid = f"MRN-{cls.upper()}-{p:04d}-77"
            for j in range(3):  # several images per patient; names carry no id
                ds = _raw(template)
                ds.PatientID, ds.SOPInstanceUID = pid, generate_uid()
                name = f"train/{cls}/img{3 * p + j:03d}.dcm"
                ds.save_as(tmp_path / name, enforce_file_format=True)
                ids[name] = pid

    def rel(records):
        return sorted(r.path.relative_to(tmp_path).as_posix() for r in records)

    records = open_dataset(tmp_path).records("train")
    train, val = train_val_split(records, 0.3, seed=0)
    assert len(records) == 60 and train and val
    assert len({r.group for r in records}) == 20  # one group per patient, not per image
    assert not {ids[f] for f in rel(train)} & {ids[f] for f in rel(val)}  # (a) patient-disjoint
    code = ("import json, sys; from privmed.data.datasets import open_dataset, train_val_split; "
            "v = train_val_split(open_dataset(sys.argv[1]).records('train'), 0.3, seed=0)[1]; "
            "print(json.dumps(sorted(r.path.relative_to(sys.argv[1]).as_posix() for r in v)))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == rel(val)  # (b) the same split in a fresh process
    blob = repr(records) + " ".join(r.group for r in records)
    assert not [pid for pid in set(ids.values()) if pid in blob]  # (c) raw ids never held
