"""Burned-in text: find it by OCR (``deid.ocr``) and fill its boxes, in DICOM pixel data or in a
PNG/JPEG image. The report says how many boxes and where, never what they said."""
from __future__ import annotations

import io
import warnings

import numpy as np

from privmed.deid import text_detect
from privmed.deid.header import DeidError
from privmed.deid.ocr import find_text, line_boxes, to_uint8
from privmed.deid.text_regions import confirmed, extend, hidden_ends, text_regions

# each end of a box widens by this share of its height, about one glyph's width in these fonts: an end
# glyph drawn on a background of its own value (dark text running onto black) cannot be seen, only assumed
WIDEN = 0.6


def redact_array(arr: np.ndarray, boxes, fill) -> np.ndarray:
    """Copy of ``arr`` (H, W[, C]) with each (left, top, right, bottom) box set to ``fill``."""
    out = np.array(arr, copy=True)
    h, w = out.shape[:2]
    for left, t, r, b in boxes:
        left, t, r, b = max(0, left), max(0, t), min(w, r), min(h, b)
        if r > left and b > t:
            out[t:b, left:r] = fill
    return out


def text_boxes(display: np.ndarray, min_conf: float = 30.0) -> tuple[list, list]:
    """(words, boxes to black out) in a display image: Tesseract's padded line boxes and the DB detector's
    line-shaped boxes (``text_detect``), each kept when it holds drawn-looking glyphs, plus text lines found
    without OCR (``text_regions``); all grown sideways over glyphs of the text's own value and over
    background of that value (where glyphs can hide), then widened."""
    words = find_text(display, min_conf=min_conf, grow=True)
    words, grown = [w for w in words if w.text], words
    gray = to_uint8(display)
    boxes = extend(gray, confirmed(gray, line_boxes(grown) + text_detect.text_lines(gray)) + text_regions(gray))
    boxes = hidden_ends(gray, boxes)
    return words, [(left - round(WIDEN * (b - t)), t, r + round(WIDEN * (b - t)), b) for left, t, r, b in boxes]


def covered_fraction(boxes, shape) -> float:
    """Share of an (H, W) image inside the union of the boxes (finders overlap: areas do not add)."""
    mask = redact_array(np.zeros(shape[:2], bool), boxes, True)
    return float(mask.mean())


def _report(words, boxes, shape) -> dict:
    return {"words_found": len(words), "boxes_redacted": len(boxes), "boxes": [list(map(int, b)) for b in boxes],
            "redacted_fraction": round(covered_fraction(boxes, shape), 4)}


def redact_pil(img):
    """PNG/JPEG: returns (redacted PIL image, report). Fills with black."""
    from PIL import Image

    arr = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
    words, boxes = text_boxes(arr)
    red = redact_array(arr, boxes, 0)
    return Image.fromarray(red), _report(words, boxes, arr.shape)


def redact_dataset(ds) -> dict:
    """Redact burned-in text in a pydicom Dataset in place (every frame). The pixel data is written back
    uncompressed (a compressed file is decompressed first, which needs its decoder). Sets
    BurnedInAnnotation = NO only after the pixels were checked and cleaned."""
    from pydicom.uid import ExplicitVRLittleEndian

    from privmed.data.dicom import read_dicom

    if "PixelData" not in ds:
        raise DeidError("the DICOM file has no pixel data to check for burned-in text")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ts is not None and ts.is_compressed:
                ds.decompress()
            arr = ds.pixel_array
    except Exception as e:
        raise DeidError(f"cannot decode the pixel data to look for burned-in text ({type(e).__name__}); install "
                        "a decoder for its transfer syntax (pylibjpeg, python-gdcm) or pass --pixels skip "
                        "when the images are known to be free of text") from None
    frames = int(ds.get("NumberOfFrames") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    fill = (arr.max() if photometric == "MONOCHROME1" else arr.min()) if arr.ndim - (frames > 1) == 2 else 0
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    raw = buf.getvalue()
    all_words, all_boxes, out, fractions = 0, [], arr.copy(), []
    for k in range(frames):
        display, _ = read_dicom(raw, max_pixels=1 << 28, frame=k if frames > 1 else None)
        words, boxes = text_boxes(display)
        all_words += len(words)
        all_boxes += [[k, *b] for b in boxes]
        fractions.append(covered_fraction(boxes, display.shape))
        if frames > 1:
            out[k] = redact_array(arr[k], boxes, fill)
        else:
            out = redact_array(arr, boxes, fill)
    if all_boxes:
        ds.PixelData = out.astype(arr.dtype).tobytes()
        if ts is not None and ts.is_compressed:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.BurnedInAnnotation = "NO"
    return {"words_found": all_words, "boxes_redacted": len(all_boxes), "boxes": all_boxes, "frames": frames,
            "redacted_fraction": round(float(np.mean(fractions)), 4)}
