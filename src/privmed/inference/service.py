"""Bytes in, result out: the prediction step shared by the REST API and the in-process app.
No web framework here. Every way an upload can be wrong becomes an ``InputError`` with an HTTP
status (413 too large, 415 not an image type, 422 an image that cannot be used) and a message."""
from __future__ import annotations

import os
import threading

from privmed.config import settings
from privmed.data.read import MAX_BYTES, MAX_PIXELS, Image, load_image, sniff_format
from privmed.errors import ImageReadError
from privmed.files import sha256_bytes
from privmed.inference.predictor import SOURCES
from privmed.inference.report import check_modality, result_dict

IMAGE_KINDS = ("png", "jpeg", "dicom", "bmp", "tiff")
_PREDICT_LOCK = threading.Semaphore(1)  # one forward at a time: the CPU cores are shared by all
_BATCHERS_LOCK = threading.Lock()


def _decode_slots() -> int:
    """Images decoded at once. A 50-megapixel RGB upload takes ~1 GB while it is decoded and checked,
    so threads decoding in parallel must be bounded: by PRIVMED_MAX_DECODES, else 1 per 8 GiB of RAM (1-4)."""
    wanted = settings().max_decodes
    if wanted is not None:
        return max(1, wanted)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2
    return max(1, min(4, ram // (8 * 2**30)))


_DECODE_SLOTS = threading.BoundedSemaphore(_decode_slots())


class InputError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def decode_upload(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, **dicom) -> Image:
    if not data:
        raise InputError(400, "the file is empty (0 bytes); upload a PNG, JPEG or DICOM image")
    if len(data) > max_bytes:
        raise InputError(413, f"the file is {len(data) / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
    kind = sniff_format(data)
    if kind not in IMAGE_KINDS:
        what = {"gif": "a GIF", "zip": "a ZIP archive", "pdf": "a PDF", "html": "an HTML page", "text": "plain text",
                "unknown": "not a recognised image"}.get(kind, kind)
        raise InputError(415, f"the content is {what}, not an image privmed reads (the type is sniffed from the "
                              "bytes, not the file name); upload a PNG, JPEG or DICOM file")
    try:
        return load_image(data, max_pixels=max_pixels, **dicom)
    except ImageReadError as e:
        msg = str(e)
        raise InputError(413 if "limit" in msg and "pixels" in msg else 422, msg) from None
    except (MemoryError, OverflowError):
        raise InputError(413, "the image is too large to decode; downscale it before upload") from None
    except Exception as e:  # a decoder failure we did not foresee is still the upload's fault
        raise InputError(422, f"could not decode the {kind.upper()} file ({type(e).__name__}); "
                              "it may be damaged; re-export it") from None


def analyse(model, data: bytes, *, filename: str | None = None, explain: bool = False,
            max_bytes: int = MAX_BYTES, window: str | None = None, frame: int | None = None,
            source: str = "file", redact: bool = False) -> tuple[dict, Image]:
    """Decode (a DICOM with the model's window, or ``window``; ``frame`` of a multi-frame file),
    check modality, predict. ``source="camera"``: a phone photo of a film or monitor, rectified
    before the quality gate (the result's ``image.rectified`` says whether a film was found).
    ``redact``: black out burned-in text first; the result says how many regions, never what they
    said. Returns the JSON-able result and the image as the model saw it (preprocessed; the decoded
    upload is released before the network runs). One call per image or per camera frame."""
    if source not in SOURCES:
        raise InputError(422, f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    digest = sha256_bytes(data or b"")
    return _analyse(model, data, digest, filename, explain, max_bytes, window, frame, source, redact)


def _analyse(model, data: bytes, digest: str, filename, explain: bool, max_bytes: int, window, frame,
             source: str = "file", redact: bool = False) -> tuple[dict, Image]:
    batcher = None if explain else _batcher(model)  # Grad-CAM needs the torch network anyway
    with batcher.coming() if batcher is not None else _NO_LOCK:
        meta, verdict, x, regions = _prepare(model, data, max_bytes, window, frame, source, redact)
    if batcher is not None:
        from privmed.inference.batcher import Busy

        try:
            probs, ood = batcher.scores(x)
        except Busy as e:
            raise InputError(503, str(e)) from None
        pred = model.finish(meta, verdict, x, probs, ood)
    else:
        with _PREDICT_LOCK:
            probs, ood = model.scores(x)
            pred = model.finish(meta, verdict, x, probs, ood, explain=explain)
    res = result_dict(pred, filename=filename, input_sha256=digest, image_meta=meta, heatmap=explain)
    if redact:
        res["redacted_regions"] = regions
    # the image as the model saw it (preprocessed, small), not the decoded upload
    return res, Image(x[0, 0].numpy(), meta)


def redact_image(img: Image) -> tuple[Image, int]:
    """Burned-in text blacked out (filled with the image's minimum) before the model sees it; the
    number of regions. The words found stay here: they may be PHI."""
    from privmed.deid.ocr import OCRError
    from privmed.deid.redact import redact_array, text_boxes

    try:
        _, boxes = text_boxes(img.pixels)
    except OCRError as e:
        raise InputError(503, f"redaction is unavailable on this server: {e}") from None
    if not boxes:
        return img, 0
    return Image(redact_array(img.pixels, boxes, img.pixels.min()), img.meta), len(boxes)


def _prepare(model, data: bytes, max_bytes: int, window, frame, source: str = "file",
             redact: bool = False):
    """Decode, modality check, quality gate, preprocess; the decoded upload (the big allocation) is
    released before the slot is, so at most ``_DECODE_SLOTS`` of them exist at once."""
    options = model.dicom_options(window, frame) if hasattr(model, "dicom_options") else {}
    with _DECODE_SLOTS:
        img = decode_upload(data, max_bytes=max_bytes, **options)
        try:
            check_modality(img.meta, model.metadata)
        except ImageReadError as e:
            raise InputError(422, str(e)) from None
        if min(img.pixels.shape) < 2:
            raise InputError(422, f"the image is {img.pixels.shape[1]}x{img.pixels.shape[0]} px; too small to classify")
        regions = 0
        if redact:
            img, regions = redact_image(img)
        try:
            img, verdict, x = model.prepare(img, source=source)  # decoded: the window is already applied
        except ImageReadError as e:
            raise InputError(422, str(e)) from None
        return img.meta, verdict, x, regions


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_LOCK = _NoLock()


def _batcher(model):
    """The model's micro-batcher (created on first use; ``PRIVMED_BATCH=off``: none)."""
    from privmed.inference.batcher import MicroBatcher, settings_from_env

    b = getattr(model, "_privmed_batcher", None)
    if b is not None:
        return b
    cfg = settings_from_env()
    if cfg is None:
        return None
    with _BATCHERS_LOCK:
        if getattr(model, "_privmed_batcher", None) is None:
            model._privmed_batcher = MicroBatcher(model.scores, **cfg)
    return model._privmed_batcher
