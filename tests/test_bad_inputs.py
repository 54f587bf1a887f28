"""The bad-input corpus (built here in tmp, never committed): every malformed, hostile or
unsupported upload gets a clean 4xx with a JSON ``detail`` message saying what was wrong, never a
5xx, and the server keeps serving. Valid-but-unusual images (16-bit PNG, CMYK JPEG, RGB DICOM)
work; valid images of poor quality get a 200 that abstains."""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from privmed.api.server import Settings, create_app  # noqa: E402

MAX_FILE = 2 * 2**20  # a small cap keeps the 'huge upload' case fast


def png_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr, **kw).save(buf, "PNG")
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def giant_png_header(w: int = 30000, h: int = 30000) -> bytes:
    """A valid PNG signature + IHDR claiming w x h pixels, then a tiny IDAT: a decompression bomb probe."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def dicom_bytes(pixels: np.ndarray, modality: str = "DX", photometric: str = "MONOCHROME2",
                frames: int | None = None) -> bytes:
    """A minimal uncompressed DICOM with patient tags that must never be echoed or logged."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-12345", "19700101"
    ds.Modality = modality
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    if frames:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if photometric == "RGB" else pixels.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def xray_pixels(data_root: Path, size: int = 128) -> np.ndarray:
    f = sorted((data_root / "covid19_xray" / "test").glob("*/*"))[0]
    return np.asarray(PILImage.open(f).convert("L").resize((size, size)))


def corpus(data_root: Path, tmp: Path) -> list[tuple[str, dict, tuple[int, ...]]]:
    """(name, request kwargs for POST /v1/predict, allowed statuses)."""
    from pydicom.data import get_testdata_file

    good = xray_pixels(data_root)
    good_png = png_bytes(good)
    jpeg = io.BytesIO()
    PILImage.fromarray(good).save(jpeg, "JPEG", quality=90)
    jpeg = jpeg.getvalue()
    cmyk = io.BytesIO()
    PILImage.fromarray(good).convert("CMYK").save(cmyk, "JPEG")
    gif = io.BytesIO()
    frames = [PILImage.fromarray(good).convert("P"), PILImage.fromarray(255 - good).convert("P")]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("image.png", good_png)
    rgb = np.repeat(good[..., None], 3, -1)
    sixteen = png_bytes(good.astype(np.uint16) * 257)  # numpy uint16 -> PIL mode I;16
    tdf = get_testdata_file

    def f(name, content, ctype="application/octet-stream", **extra):
        return {"files": {"file": (name, content, ctype)}, **extra}

    four = tuple(range(400, 500))
    return [
        ("empty file", f("empty.png", b""), (400,)),
        ("truncated PNG", f("trunc.png", good_png[: len(good_png) // 2]), (422,)),
        ("truncated JPEG", f("trunc.jpg", jpeg[: len(jpeg) // 3]), (422,)),
        ("text renamed .png", f("notes.png", b"patient notes: all fine\n" * 20), (415,)),
        ("HTML page", f("page.png", b"<!DOCTYPE html><html><body>hi</body></html>"), (415,)),
        ("SVG (XML text)", f("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg"></svg>'), (415,)),
        ("zip archive", f("images.zip", z.getvalue()), (415,)),
        ("PDF", f("report.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"), (415,)),
        ("random bytes", f("noise.bin", np.random.default_rng(0).bytes(4096)), (415,)),
        ("30000x30000 PNG header", f("bomb.png", giant_png_header()), (413, 422)),
        ("animated GIF", f("cine.gif", gif.getvalue()), (415,)),
        ("1x1 PNG", f("dot.png", png_bytes(np.zeros((1, 1), np.uint8))), (422,)),
        ("DICOM without pixel data", f("plan.dcm", Path(tdf("rtplan.dcm")).read_bytes()), (422,)),
        ("DICOM JPEG-LS without decoder", f("jls.dcm", Path(tdf("JPEGLSNearLossless_16.dcm")).read_bytes()), (422,)),
        ("multi-frame DICOM", f("cine.dcm", Path(tdf("emri_small.dcm")).read_bytes()), (422,)),
        ("truncated DICOM", f("cut.dcm", dicom_bytes(good)[:600]), (422,)),
        ("MR DICOM to an X-ray model", f("mr.dcm", dicom_bytes(good, modality="MR")), (422,)),
        ("CT DICOM to an X-ray model", f("ct.dcm", Path(tdf("CT_small.dcm")).read_bytes()), (422,)),
        ("huge upload", f("huge.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_FILE + 2**20)), (413,)),
        ("missing file field", {"files": {"model": (None, b"covid19_cnn64")}}, (400,)),
        ("form-urlencoded body", {"data": {"model": "covid19_cnn64"}}, (415,)),
        ("wrong form field", {"files": {"image": ("x.png", good_png, "image/png")}}, (400,)),
        ("file field sent as text", {"files": {"file": (None, b"not a file")}}, (400,)),
        ("unknown model id", f("x.png", good_png, data={"model": "no-such-model"}), (404,)),
        ("unknown format", f("x.png", good_png, data={"format": "xml"}), (400,)),
        ("bad explain flag", f("x.png", good_png, data={"explain": "maybe"}), (400,)),
        ("non-multipart body", {"content": good_png, "headers": {"content-type": "image/png"}}, (415,)),
        ("JSON body", {"json": {"file": "aGVsbG8="}}, (415,)),
        ("multipart without boundary", {"content": b"--x\r\n\r\n", "headers": {"content-type": "multipart/form-data"}},
         (400,)),
        ("too many files", {"files": [("file", ("x.png", good_png, "image/png"))] * 17}, (413,)),
        ("one bad file among good ones", {"files": [("file", ("a.png", good_png, "image/png")),
                                                    ("file", ("b.png", b"", "image/png"))]}, (400,)),
    ] + [("16-bit PNG (valid)", f("x16.png", sixteen), (200,)),
         ("CMYK JPEG (valid)", f("cmyk.jpg", cmyk.getvalue()), (200, *four)),
         ("RGB DICOM (valid)", f("rgb.dcm", dicom_bytes(rgb, modality="DX", photometric="RGB")), (200,)),
         ("grey DX DICOM with patient tags (valid)", f("dx.dcm", dicom_bytes(good)), (200,)),
         ("path-like file name", f("../../etc/passwd", good_png), (200,))]


@pytest.fixture
def client(small_bundle, tmp_path):
    s = Settings(db_url=f"sqlite:///{tmp_path / 'a.db'}", bundles=[small_bundle], scan_default_bundles=False,
                 auth=False, host="127.0.0.1", max_file_bytes=MAX_FILE, max_request_bytes=MAX_FILE + 2**20)
    with TestClient(create_app(s), raise_server_exceptions=False, client=("127.0.0.1", 50000)) as c:
        c.db = tmp_path / "a.db"
        yield c


def test_bad_input_corpus_gets_clean_4xx_and_server_keeps_serving(client, data_root, tmp_path):
    cases = corpus(data_root, tmp_path)
    assert sum(1 for _, _, ok in cases if 200 not in ok) >= 25
    failures = []
    for name, kwargs, allowed in cases:
        r = client.post("/v1/predict", **kwargs)
        body = r.json()
        if r.status_code not in allowed:
            failures.append(f"{name}: {r.status_code} {body}")
            continue
        if r.status_code >= 400:
            assert isinstance(body.get("detail"), str) and len(body["detail"]) > 15, (name, body)
        else:
            res = body["results"][0]
            assert "Doe" not in r.text and "PID-12345" not in r.text and "19700101" not in r.text
            assert "patient_id_hash" not in r.text
            assert res["label"] in res["probabilities"], name
    assert not failures, "\n".join(failures)
    dump = b"".join(p.read_bytes() for p in tmp_path.glob("a.db*"))
    assert b"Doe^Jane" not in dump and b"PID-12345" not in dump and b"passwd" not in dump
    good = sorted((data_root / "covid19_xray" / "test").glob("*/*"))[0]
    r = client.post("/v1/predict", files={"file": (good.name, good.read_bytes(), "image/jpeg")})
    assert r.status_code == 200 and r.json()["results"][0]["label"]
    assert client.get("/health").status_code == 200
    assert 'status="5' not in client.get("/metrics").text


def test_poor_quality_images_abstain(client):
    for name, arr in {"black": np.zeros((128, 128), np.uint8), "noise":
                      np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)}.items():
        r = client.post("/v1/predict", files={"file": (f"{name}.png", png_bytes(arr), "image/png")})
        assert r.status_code == 200, r.text
        res = r.json()["results"][0]
        assert res["abstain"] and "radiologist" in res["message"], (name, res)


def test_unknown_endpoint_and_method_are_json_4xx(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and "no such endpoint" in r.json()["detail"]
    r = client.get("/v1/predict")
    assert r.status_code == 405 and "not allowed" in r.json()["detail"]
