"""``privmed deid IN OUT``: de-identify a DICOM/PNG/JPEG file or a folder of them.

Output names never reuse input names (they often carry a patient's name or id): a DICOM file is named
by its remapped SOPInstanceUID, an image by a keyed hash of its relative path. Each output is written
to a temporary name and renamed, so a failure leaves nothing half-written. The report holds counts,
output names and reasons, never an identifying value.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import warnings
from pathlib import Path

from privmed.deid.header import DeidError, Options, deidentify
from privmed.errors import ImageReadError
from privmed.files import atomic_write_bytes

DICOM_SUFFIXES = (".dcm", ".dicom", "")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PIXEL_MODES = ("ocr", "skip")


def read_dicom_dataset(data: bytes):
    """A pydicom Dataset, or DeidError naming the problem (not DICOM, no pixels...)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise DeidError("not a DICOM file (no DICM preamble); PNG/JPEG images are de-identified by OCR only") from None
    except Exception as e:
        raise DeidError(f"the DICOM file is malformed ({type(e).__name__})") from None


def deid_dataset(ds, secret: bytes, options: Options, pixels: str = "ocr") -> dict:
    """De-identify one Dataset in place: burned-in text first (it needs the original pixels), then the header."""
    from privmed.deid.redact import redact_dataset

    if pixels not in PIXEL_MODES:
        raise DeidError(f"pixels must be one of {', '.join(PIXEL_MODES)}")
    rep: dict = {}
    if pixels == "ocr" and "PixelData" not in ds:
        raise DeidError("the DICOM file has no pixel data, so there is nothing to check for burned-in text; "
                        "de-identify its header only with --pixels skip")
    if pixels == "ocr":
        rep["pixels"] = redact_dataset(ds)
        options = Options(options.dates, options.clean_descriptors, pixels_cleaned=True)
    elif str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise DeidError("BurnedInAnnotation is YES and pixel redaction is off (--pixels skip); the pixels "
                        "would keep the text: run with --pixels ocr")
    rep["header"] = deidentify(ds, secret, options).as_dict()
    return rep


def _is_dicom_bytes(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def deid_one(src: Path, out_dir: Path, secret: bytes, options: Options, pixels: str = "ocr",
             rel: str | None = None) -> dict:
    data = src.read_bytes()
    if _is_dicom_bytes(data) or src.suffix.lower() in (".dcm", ".dicom"):
        ds = read_dicom_dataset(data)
        rep = deid_dataset(ds, secret, options, pixels)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        name = f"{ds.SOPInstanceUID}.dcm" if "SOPInstanceUID" in ds else _keyed_name(secret, rel or src.name, ".dcm")
        atomic_write_bytes(out_dir / name, buf.getvalue(), private=True)  # owner-only
        return {"out": name, "kind": "dicom", **rep}
    if src.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        from privmed.deid.redact import redact_pil

        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except (UnidentifiedImageError, OSError):
            raise ImageReadError(f"{src.suffix} file is not a readable image") from None
        if pixels == "skip":
            raise DeidError("a PNG/JPEG has no header to clean; its only de-identification is OCR redaction "
                            "(--pixels ocr)")
        red, rep = redact_pil(img)
        buf = io.BytesIO()
        fmt = "PNG" if src.suffix.lower() == ".png" else "JPEG"
        red.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))  # no EXIF/text chunks copied
        name = _keyed_name(secret, rel or src.name, src.suffix.lower())
        atomic_write_bytes(out_dir / name, buf.getvalue(), private=True)  # owner-only
        return {"out": name, "kind": "image", "pixels": rep}
    raise DeidError(f"not a DICOM, PNG or JPEG file (suffix {src.suffix or 'none'})")


def _keyed_name(secret: bytes, rel: str, suffix: str) -> str:
    return "img-" + hmac.new(secret, rel.encode(), hashlib.sha256).hexdigest()[:16] + suffix


def deid_path(src: Path, out: Path, secret: bytes, options: Options, pixels: str = "ocr") -> dict:
    """De-identify a file or every file under a folder into ``out``; per-file failures are listed (by
    position, not name) and leave no output file."""
    src, out = Path(src), Path(out)
    if not src.exists():
        raise DeidError(f"{src} does not exist")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise DeidError("the output folder must not be the input folder or inside it")
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DeidError(f"no files under {src}")
    out.mkdir(parents=True, exist_ok=True)
    done, failed = [], []
    for i, f in enumerate(files):
        rel = str(f.relative_to(src)) if src.is_dir() else f.name
        try:
            done.append(deid_one(f, out, secret, options, pixels, rel))
        except (DeidError, ImageReadError) as e:
            failed.append({"input_index": i, "error": str(e)})
    totals = {"files": len(files), "written": len(done), "failed": len(failed),
              "words_found_in_pixels": sum((d.get("pixels") or {}).get("words_found", 0) for d in done),
              "boxes_redacted": sum((d.get("pixels") or {}).get("boxes_redacted", 0) for d in done),
              "header_elements_changed": sum(sum(v for k, v in d.get("header", {}).items() if k != "by_keyword")
                                             for d in done),
              "options": {"dates": options.dates, "clean_descriptors": options.clean_descriptors, "pixels": pixels}}
    return {**totals, "outputs": done, "failures": failed}
