"""DICOM to one grayscale float image in [0, 1] plus metadata with no patient identifiers.

Display pipeline (DICOM PS3.4 Annex N order): modality LUT (rescale slope/intercept) ->
VOI LUT or window centre/width -> MONOCHROME1 inversion. Without a VOI, 8-bit display data
is scaled by its BitsStored range and deeper data by its own min/max (raw 12/16-bit values
rarely span the nominal range, so a fixed scale would make a normal MR look black).

CT: the modality LUT gives Hounsfield units; the file's own window wins, else the caller's
named default (a lung model passes ``default_window="lung"``), and ``window="lung"`` or
``"mediastinal"`` forces one. The window used is recorded in ``meta["window"]``. Multi-frame
files (enhanced CT, series, cine) are refused unless ``frame=K`` picks one frame.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np

from privmed.errors import ImageReadError, UploadTooLarge

# named CT windows in Hounsfield units: (centre, width)
CT_WINDOWS = {"lung": (-600.0, 1500.0), "mediastinal": (40.0, 400.0)}
WINDOW_CHOICES = ("file",) + tuple(CT_WINDOWS)
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"

_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR")

# transfer syntax UID prefix -> the pip packages whose pydicom plugin decodes it
_DECODER_HINTS = {
    "1.2.840.10008.1.2.4.5": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",  # JPEG baseline/extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.8": "pylibjpeg + pylibjpeg-libjpeg, pyjpegls, or python-gdcm",  # JPEG-LS
    "1.2.840.10008.1.2.4.9": "pylibjpeg + pylibjpeg-openjpeg, or python-gdcm",  # JPEG 2000
    "1.2.840.10008.1.2.4.20": "pylibjpeg + pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg + pylibjpeg-rle",
}


def read_dicom(data: bytes | str | Path, max_pixels: int, *, window: str = "file",
               default_window: str | None = None, frame: int | None = None) -> tuple[np.ndarray, dict]:
    """Decode one DICOM image (or frame ``frame`` of a multi-frame file).

    ``window``: "file" (the file's VOI, else ``default_window`` for CT, else the data range) or a
    name in ``CT_WINDOWS`` (CT only). Raises ``ImageReadError`` naming the problem and the fix."""
    for name in (window, default_window):
        if name is not None and name not in WINDOW_CHOICES:
            raise ImageReadError(f"unknown window '{name}'; choose one of {', '.join(WINDOW_CHOICES)}")
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or frame < 0):
        raise ImageReadError(f"frame must be a whole number >= 0 (the first frame is 0), got {frame!r}")
    ds = _parse(data)
    try:
        with warnings.catch_warnings():  # pydicom warns per odd value; we raise or succeed instead
            warnings.simplefilter("ignore")
            return _read(ds, max_pixels, window, default_window, frame)
    except ImageReadError:
        raise
    except Exception as e:  # malformed header values (e.g. '1A' in an integer tag) surface lazily
        raise ImageReadError(f"the DICOM header is malformed ({type(e).__name__}: {e}); re-export the image") from None


def _read(ds, max_pixels: int, window: str, default_window: str | None, frame: int | None):
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        what = f"modality {ds.get('Modality')}" if ds.get("Modality") else "no image module"
        if len(ds) == 0 or ("Rows" not in ds and "SOPClassUID" not in ds):
            raise ImageReadError("not a DICOM image: no DICOM header or pixel data found; the file may be corrupt")
        raise ImageReadError(f"the DICOM file has no pixel data ({what}); it is not an image (a report, plan...)")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows <= 0 or cols <= 0:
        raise ImageReadError("the DICOM header has no valid Rows/Columns; the file is corrupt")
    if rows * cols > max_pixels:
        raise UploadTooLarge(
            f"DICOM image is {cols}x{rows} = {rows * cols:,} pixels, over the {max_pixels:,} limit; downscale it"
        )
    frames = int(ds.get("NumberOfFrames") or 1)
    what = "an enhanced multi-frame CT" if str(ds.get("SOPClassUID") or "") == ENHANCED_CT \
        else "a series or cine loop"
    if frame is None and frames > 1:
        raise ImageReadError(
            f"the DICOM file holds {frames} frames ({what}); choose one with frame=K, K from 0 to {frames - 1} "
            "(CLI --frame K, API form field 'frame'), or send one frame as its own file"
        )
    if frame is not None and frame >= frames:
        raise ImageReadError(f"frame {frame} was asked for but the DICOM file holds {frames} frame(s) "
                             f"(0 to {frames - 1})")
    meta = _safe_meta(ds)
    if frame is not None:
        meta["frames"], meta["frame"] = frames, int(frame)
        _frame_attributes(ds, int(frame))
        if frames > 1:
            ds.pixel_array_options(index=int(frame))  # decode only the chosen frame
    if window in CT_WINDOWS and not _is_ct(ds):
        raise ImageReadError(f"the '{window}' window is in Hounsfield units and applies to CT only; this DICOM's "
                             f"Modality is {meta['modality'] or 'not given'}; use window 'file'")
    arr = _decode(ds, meta)
    photometric = meta["photometric_interpretation"]
    if photometric in _COLOUR:
        pixels = _colour_to_gray(arr, ds, photometric)
        meta["converted_to_gray_from"] = photometric
        meta["voi"] = "bits_stored"
    else:
        named = window if window in CT_WINDOWS else (default_window if default_window in CT_WINDOWS else None)
        pixels = _monochrome(arr, ds, meta, named if _is_ct(ds) else None, forced=window in CT_WINDOWS)
    if not np.isfinite(pixels).all():
        raise ImageReadError("DICOM pixel data contains NaN or infinite values")
    return np.clip(pixels, 0.0, 1.0).astype(np.float32), meta


def _parse(data):
    import pydicom
    from pydicom.uid import UID

    try:
        src = io.BytesIO(bytes(data)) if isinstance(data, (bytes, bytearray, memoryview)) else str(data)
        with warnings.catch_warnings():  # pydicom warns on every odd tag with force=True
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(src, force=True)
    except FileNotFoundError:
        raise ImageReadError(f"no such file: {data}") from None
    except Exception as e:
        raise ImageReadError(f"not a readable DICOM file ({type(e).__name__}: {e}); it may be truncated") from None
    # files without a meta header: take the transfer syntax from how the body was encoded
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if implicit is not None:
            uid = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
            ds.file_meta.TransferSyntaxUID = UID(uid)
    return ds


def _safe_meta(ds) -> dict:
    """Technical tags only. No patient id, not even hashed: a fixed-salt hash of a short id is
    reversible by enumeration, and nothing grouped by it."""
    ts = ds.file_meta.get("TransferSyntaxUID")
    meta = {
        "format": "dicom",
        "modality": str(ds.get("Modality") or "") or None,
        "photometric_interpretation": str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper(),
        "rows": int(ds.Rows),
        "cols": int(ds.Columns),
        "width": int(ds.Columns),
        "height": int(ds.Rows),
        "bits_stored": int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0) or None,
        "transfer_syntax_uid": str(ts) if ts else None,
        "transfer_syntax": ts.name if ts else None,
        "body_part": str(ds.get("BodyPartExamined") or "") or None,
        "header": header_facts(ds),
    }
    return meta


def header_facts(ds) -> dict:
    """What intended use is checked against (``inference.intended_use``): age in years, view, body
    part. Computed here so raw dates and PatientAge strings never leave the reader; malformed or
    absent values give None."""
    facts = {}
    for key, read in (("age_years", lambda: _age_years(ds)), ("view", lambda: _code(ds, "ViewPosition")),
                      ("body_part", lambda: _code(ds, "BodyPartExamined"))):
        try:
            facts[key] = read()
        except Exception:  # a malformed tag must not refuse the image: it is only not known
            facts[key] = None
    return facts


def _code(ds, tag: str) -> str | None:
    return str(ds.get(tag) or "").strip().upper() or None


_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def _age_years(ds) -> float | None:
    """PatientAge ('045Y', '006M', '010D', '002W'), else PatientBirthDate to the study's date."""
    m = re.fullmatch(r"(\d{1,3})([DWMY])", str(ds.get("PatientAge") or "").strip().upper())
    if m and m.group(0) != "000Y":  # '000Y' is often a blank filled in, not an infant's age
        return round(int(m.group(1)) * _AGE_UNITS[m.group(2)], 2)
    birth = _date(ds.get("PatientBirthDate"))
    when = next((d for d in map(_date, (ds.get(t) for t in ("StudyDate", "SeriesDate", "AcquisitionDate"))) if d),
                None)
    if birth is None or when is None or when < birth:
        return None
    return round((when - birth).days / 365.25, 2)


def _date(value):
    import datetime as dt

    try:
        return dt.datetime.strptime(str(value or "").strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _decode(ds, meta: dict) -> np.ndarray:
    from pydicom.pixels import get_decoder

    uid, name = meta["transfer_syntax_uid"], meta["transfer_syntax"]
    if uid is None:
        raise ImageReadError("the DICOM file states no transfer syntax and its encoding cannot be inferred")
    hint = next((v for k, v in _DECODER_HINTS.items() if uid.startswith(k)), None)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise ImageReadError(f"DICOM pixel data in transfer syntax '{name}' ({uid}) cannot be decoded by privmed")
    if not decoder.is_available:
        raise ImageReadError(
            f"DICOM pixel data is compressed as '{name}' ({uid}) and no installed decoder handles it; "
            f"install {hint or 'pylibjpeg or python-gdcm'} (pip) or send an uncompressed DICOM"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.pixel_array
    except Exception as e:
        extra = f"; installing {hint} may help" if hint and ds.file_meta.TransferSyntaxUID.is_compressed else ""
        reason = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise ImageReadError(
            f"could not decode the DICOM pixel data ('{name}'): {reason}; the file may be truncated or corrupt{extra}"
        ) from None


def _is_ct(ds) -> bool:
    return str(ds.get("Modality") or "").upper() == "CT" or str(ds.get("RescaleType") or "").upper() == "HU"


def _frame_attributes(ds, frame: int) -> None:
    """Enhanced objects keep rescale and window per frame in functional groups; copy the chosen
    frame's values to the top level, where the modality and VOI LUT functions look."""
    groups = [g[0] for g in (ds.get("SharedFunctionalGroupsSequence"),) if g]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        groups.append(per_frame[frame])  # after shared: per-frame values win
    for g in groups:
        for name in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            if g.get(name):
                for elem in g[name][0]:
                    ds[elem.tag] = elem


def hounsfield(data: bytes | str | Path, frame: int | None = None) -> tuple[np.ndarray, dict]:
    """A CT image in Hounsfield units (the modality LUT applied, no window) and its metadata."""
    from pydicom.pixels import apply_modality_lut

    ds = _parse(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _read(ds, 2**31, "file", None, frame)  # the same checks and refusals as read_dicom
        if not _is_ct(ds):
            raise ImageReadError(f"Hounsfield units need a CT; this DICOM's Modality is {ds.get('Modality')}")
        return apply_modality_lut(ds.pixel_array, ds).astype(np.float64), _safe_meta(ds)


def _monochrome(arr: np.ndarray, ds, meta: dict, named: str | None = None, forced: bool = False) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if arr.ndim != 2:
        raise ImageReadError(f"expected one 2-D grayscale frame, decoded an array of shape {arr.shape}")
    modality = apply_modality_lut(arr, ds)  # integer LUT output stays integer for a VOI LUT lookup
    if "RescaleSlope" in ds and "RescaleIntercept" in ds and not ds.get("ModalityLUTSequence"):
        meta["rescale"] = {"slope": float(ds.RescaleSlope), "intercept": float(ds.RescaleIntercept)}
    values = modality.astype(np.float64)
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    method = "voi_lut" if ds.get("VOILUTSequence") else ("window" if has_window else None)
    if forced:
        method = None
    lo = hi = 0.0
    if method:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lo, hi = _voi_output_range(ds, method)
                values = apply_voi_lut(modality, ds).astype(np.float64)
        except Exception:  # malformed window/LUT: fall back to the default or data range, not refuse
            method, values = None, modality.astype(np.float64)
    if method:
        meta["window"] = _file_window(ds, method)
    elif named:  # a named HU window, linear without the half-pixel offsets (DICOM LINEAR_EXACT)
        c, w = CT_WINDOWS[named]
        method, lo, hi = "named_window", c - w / 2, c + w / 2
        meta["window"] = {"name": named, "center": c, "width": w, "source": "requested" if forced else "default"}
    if method is None:
        bits = meta["bits_stored"] or 16
        if bits <= 8 and "RescaleSlope" not in ds and "ModalityLUTSequence" not in ds:
            method, lo, hi = "bits_stored", 0.0, float(2**bits - 1)
        else:
            method, lo, hi = "min_max", float(values.min()), float(values.max())
    out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if meta["photometric_interpretation"] == "MONOCHROME1":  # high values are dark: flip to MONOCHROME2
        out = 1.0 - out
        meta["inverted"] = True
    meta["voi"] = method
    if "window" not in meta:
        meta["window"] = {"name": "data range" if method == "min_max" else "bits stored", "center": (lo + hi) / 2,
                          "width": hi - lo, "source": "data"}
    return out


def _file_window(ds, method: str) -> dict:
    if method == "voi_lut":
        return {"name": "file VOI LUT", "center": None, "width": None, "source": "file"}
    from pydicom.multival import MultiValue

    # several windows may be listed; pydicom applies the first
    first = lambda v: float(v[0] if isinstance(v, (MultiValue, list, tuple)) else v)  # noqa: E731
    return {"name": "file", "center": first(ds.WindowCenter), "width": first(ds.WindowWidth), "source": "file",
            "function": str(ds.get("VOILUTFunction") or "LINEAR")}


def _voi_output_range(ds, method: str) -> tuple[float, float]:
    """The range pydicom maps onto, probed through pydicom itself so the two cannot disagree."""
    from pydicom.pixels import apply_voi, apply_windowing

    if method == "window":
        with np.errstate(over="ignore"):
            ends = apply_windowing(np.array([-1e12, 1e12]), ds)
    else:
        desc = list(ds.VOILUTSequence[0].LUTDescriptor)
        first = desc[1]
        domain = np.arange(first, first + (desc[0] or 2**16), dtype=np.int64)
        ends = apply_voi(domain, ds)
    return float(np.min(ends)), float(np.max(ends))


def _colour_to_gray(arr: np.ndarray, ds, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        # some palettes declare 16-bit entries but hold 8-bit values
        peak = 255.0 if arr.max() <= 255 else 65535.0
    else:  # pydicom already converted YBR to RGB
        peak = float(2 ** int(ds.get("BitsStored") or 8) - 1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageReadError(f"colour DICOM decoded to shape {arr.shape}, expected HxWx3")
    gray = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return gray / peak
