"""Decode bytes, paths or arrays into one grayscale float image plus PHI-free metadata.

PNG/JPEG go through PIL, DICOM through ``privmed.data.dicom``. The format is sniffed from the
content, never trusted from the file extension.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from privmed.errors import EmptyUpload, ImageReadError, Undecodable, UnsupportedFormat, UploadTooLarge

MAX_PIXELS = 50_000_000  # decompression-bomb cap (a 7000x7000 image passes)
MAX_BYTES = 64 * 1024 * 1024
# Larger 8-bit images are reduced (box filter, integer factor) while still 1 byte/pixel in PIL: the
# float conversion of a 40-megapixel RGB image took ~1.6 GB; every model input is <= 1024 px anyway
# and no dataset image comes near this size, so results on real films do not change.
MAX_WORKING_PIXELS = 16_000_000


@dataclass
class Image:
    """Grayscale pixels in [0, 1] (float32, HxW) and metadata with no patient identifiers."""

    pixels: np.ndarray
    meta: dict = field(default_factory=dict)


_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"PK\x03\x04", "zip"),
    (b"%PDF", "pdf"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
]


def sniff_format(data: bytes) -> str:
    """Name the format from the first bytes: png, jpeg, dicom, or what it really is."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 8 and data[:2] in (b"\x08\x00", b"\x02\x00") and data[2:4] in (b"\x00\x00", b"\x10\x00"):
        return "dicom"  # preamble-less DICOM starting with a group 0008/0002 tag
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    if data[:1024] and all(32 <= b < 127 or b in (9, 10, 13) for b in data[:1024]):
        return "text"
    return "unknown"


def load_image(source, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES, **dicom) -> Image:
    """Read a path, bytes, numpy array or PIL image into an ``Image``.

    ``dicom``: ``window``, ``default_window``, ``frame`` for DICOM input (see ``data.dicom``).
    Raises ``ImageReadError`` with a message that names the problem and the fix.
    """
    if isinstance(source, Image):
        return source
    if isinstance(source, np.ndarray):
        return Image(_to_gray01(source), {"format": "array", "shape": list(source.shape)})
    if isinstance(source, PILImage.Image):
        return _from_pil(source, "pil", max_pixels)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageReadError(f"no such file: {path}")
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        raise ImageReadError(f"cannot read an image from {type(source).__name__}; pass a path, bytes or an array")
    return decode_bytes(data, max_bytes=max_bytes, max_pixels=max_pixels, **dicom)


IMAGE_KINDS = ("png", "jpeg", "dicom", "bmp", "tiff")
_NOT_IMAGES = {"gif": "a GIF", "zip": "a ZIP archive", "pdf": "a PDF", "html": "an HTML page", "text": "plain text",
               "unknown": "not a recognised image"}


def decode_bytes(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, window: str | None = None,
                 default_window: str | None = None, frame: int | None = None) -> Image:
    """The one decoder of uploaded bytes. Raises a typed ``ImageReadError``: ``EmptyUpload``,
    ``UploadTooLarge`` (over ``max_bytes`` or ``max_pixels``), ``UnsupportedFormat`` (sniffed from the
    bytes, never the name), ``Undecodable`` (damaged data), or ``ImageReadError`` itself (a usable
    format asked for something it does not hold)."""
    if not data:
        raise EmptyUpload("the file is empty (0 bytes); upload a PNG, JPEG or DICOM image")
    if len(data) > max_bytes:
        raise UploadTooLarge(f"the file is {len(data) / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
    kind = sniff_format(data)
    if kind not in IMAGE_KINDS:
        raise UnsupportedFormat(f"the content is {_NOT_IMAGES.get(kind, kind)}, not an image privmed reads (the type "
                                "is sniffed from the bytes, not the file name); upload a PNG, JPEG or DICOM file")
    try:
        return _decode_kind(data, kind, max_pixels, window, default_window, frame)
    except ImageReadError:
        raise
    except (MemoryError, OverflowError):
        raise UploadTooLarge("the image is too large to decode; downscale it before upload") from None
    except Exception as e:  # a decoder failure we did not foresee is still the file's fault
        raise Undecodable(f"could not decode the {kind.upper()} file ({type(e).__name__}); "
                          "it may be damaged; re-export it") from None


def _decode_kind(data: bytes, kind: str, max_pixels: int, window, default_window, frame) -> Image:
    if kind == "dicom":
        from privmed.data.dicom import read_dicom

        pixels, meta = read_dicom(data, max_pixels=max_pixels, window=window or "file",
                                  default_window=default_window, frame=frame)
        return Image(pixels, meta)
    if frame not in (None, 0):  # PNG/JPEG hold one picture: frame 0 is the only one
        raise ImageReadError(f"frame {frame} was asked for but a {kind.upper()} file holds one image; frames "
                             "are for multi-frame DICOM")
    try:
        pil = PILImage.open(io.BytesIO(data))
    except Exception as e:  # PIL raises many types for bad headers
        raise Undecodable(f"could not decode the {kind.upper()} header ({e}); the file may be damaged") from None
    return _from_pil(pil, kind, max_pixels)


_EIGHT_BIT = {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "RGBX"}


def _from_pil(pil: PILImage.Image, kind: str, max_pixels: int) -> Image:
    w, h = pil.size
    if w * h > max_pixels:
        raise UploadTooLarge(
            f"image is {w}x{h} = {w * h:,} pixels, over the {max_pixels:,} limit; downscale it before upload"
        )
    if getattr(pil, "n_frames", 1) > 1:
        raise ImageReadError(f"{kind.upper()} has {pil.n_frames} frames; send a single still image")
    mode = pil.mode
    k = math.ceil(math.sqrt(w * h / MAX_WORKING_PIXELS)) if w * h > MAX_WORKING_PIXELS else 1
    if k > 1 and pil.format == "JPEG":
        pil.draft(pil.mode, (-(-w // k), -(-h // k)))  # the decoder itself skips detail: less memory
    try:
        pil.load()
        if k > 1 and mode in _EIGHT_BIT:
            pil = pil.convert("L") if mode != "L" else pil
            k = math.ceil(math.sqrt(pil.width * pil.height / MAX_WORKING_PIXELS))
            pil = pil.reduce(k) if k > 1 else pil
    except Exception as e:
        raise Undecodable(f"the {kind.upper()} data is truncated or corrupt ({e}); re-export the image") from None
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(pil, dtype=np.float32)
        peak = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        pixels = np.clip(arr / peak, 0, 1)
    elif mode == "F":
        pixels = _to_gray01(np.asarray(pil, dtype=np.float32))
    else:
        if mode not in ("L", "RGB"):
            pil = pil.convert("RGB") if mode not in ("LA", "1", "P") else pil.convert("L")
        pixels = _to_gray01(np.asarray(pil))
    meta = {"format": kind, "width": w, "height": h, "mode": mode}
    if pil.size != (w, h):
        meta["decoded_size"] = list(pil.size)
    return Image(pixels.astype(np.float32, copy=False), meta)


def _to_gray01(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    dtype = arr.dtype
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif arr.ndim != 2:
        raise ImageReadError(f"expected a 2-D grayscale or HxWx3 colour image, got shape {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ImageReadError("image contains NaN or infinite values")
    if np.issubdtype(dtype, np.integer):
        arr = arr / float(np.iinfo(dtype).max)
    elif arr.size and (arr.min() < 0 or arr.max() > 1):  # float data outside [0, 1]: stretch
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.clip(arr, 0.0, 1.0)
