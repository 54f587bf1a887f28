"""Bytes in, result out: the prediction step shared by the REST API and the in-process app.
No web framework here and no HTTP statuses: an upload that cannot be used raises the typed
``ImageReadError`` of ``data.read`` / ``Model.decode`` (``EmptyUpload``, ``UploadTooLarge``,
``UnsupportedFormat``, ``Undecodable``, ``WrongModality``), a missing server part ``Unavailable``;
``api/`` maps each type to its status."""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from privmed.config import settings
from privmed.data.read import MAX_BYTES, Image
from privmed.errors import ImageReadError, Unavailable
from privmed.files import sha256_bytes
from privmed.inference.batcher import Busy
from privmed.inference.predictor import SOURCES
from privmed.inference.report import result_dict

_SLOTS: dict[int, threading.Semaphore] = {}  # forwards at once (PRIVMED_BATCH_WORKERS) -> its semaphore
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


def analyse(model, data: bytes, *, filename: str | None = None, explain: bool = False,
            max_bytes: int = MAX_BYTES, window: str | None = None, frame: int | None = None,
            source: str = "file", redact: bool = False, input_sha256: str | None = None,
            keep_decoded: bool = False, batch: bool = True) -> tuple[dict, Image]:
    """Decode once (a DICOM with the model's window, or ``window``; ``frame`` of a multi-frame file;
    refused past ``max_bytes``), check modality, predict. ``source="camera"``: a phone photo of a film
    or monitor, rectified before the quality gate (the result's ``image.rectified`` says whether a
    film was found). ``redact``: black out burned-in text first; the result says how many regions,
    never what they said. ``input_sha256``: the caller's digest of ``data`` (not computed twice).
    Returns the JSON-able result and the image as the model saw it: preprocessed (small; the decoded
    upload is released before the network runs), or with ``keep_decoded`` the decoded (windowed,
    rectified) image, for display. One call per image or per camera frame. ``batch=False``: the forward
    runs in this thread, not through the model's micro-batcher (the caller is a ``Workers`` thread)."""
    if source not in SOURCES:
        raise ImageReadError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    digest = input_sha256 or sha256_bytes(data or b"")
    batcher = None if explain or not batch else _batcher(model)  # Grad-CAM needs the torch network anyway
    with batcher.coming() if batcher is not None else _NO_LOCK:
        meta, verdict, x, regions, decoded = _prepare(model, data, max_bytes, window, frame, source, redact,
                                                      keep_decoded)
    if batcher is not None:
        probs, ood = batcher.scores(x)  # a full queue raises Busy (an ``Unavailable``)
        pred = model.finish(meta, verdict, x, probs, ood)
    else:
        with _forward_slots():
            probs, ood = model.scores(x)
            pred = model.finish(meta, verdict, x, probs, ood, explain=explain)
    res = result_dict(pred, filename=filename, input_sha256=digest, image_meta=meta, heatmap=explain)
    if redact:
        res["redacted_regions"] = regions
    return res, decoded if keep_decoded else Image(x[0, 0].numpy(), meta)


def redact_image(img: Image) -> tuple[Image, int]:
    """Burned-in text blacked out (filled with the image's minimum) before the model sees it; the
    number of regions. The words found stay here: they may be PHI."""
    from privmed.deid.ocr import OCRError
    from privmed.deid.redact import redact_array, text_boxes

    try:
        _, boxes = text_boxes(img.pixels)
    except OCRError as e:
        raise Unavailable(f"redaction is unavailable on this server: {e}") from None
    if not boxes:
        return img, 0
    return Image(redact_array(img.pixels, boxes, img.pixels.min()), img.meta), len(boxes)


def _prepare(model, data: bytes, max_bytes: int, window, frame, source: str, redact: bool, keep_decoded: bool):
    """``Model.prepare`` (decode, modality check, redaction, quality gate, preprocess) inside a decode
    slot; the decoded upload (the big allocation) is dropped before the slot is released, unless the
    caller keeps it for display, so at most ``_DECODE_SLOTS`` of them exist at once."""
    regions = [0]

    def redact_step(img: Image) -> Image:
        img, regions[0] = redact_image(img)
        return img

    with _DECODE_SLOTS:
        img, verdict, x = model.prepare(data, window=window, frame=frame, source=source, max_bytes=max_bytes,
                                        edit=redact_step if redact else None)
        return img.meta, verdict, x, regions[0], img if keep_decoded else None


class Workers:
    """``n`` threads (``privmed api``: one per core) that each run whole requests: decode, quality gate,
    forward and result in one thread, the forward on one ONNX Runtime thread. On two cores this costs
    less CPU per image than handing each image from a request thread to a forward thread (the micro-
    batcher): every hand-off wakes a thread, and batches of two cost more per image than single
    forwards on this CPU (docs/notebook/BENCHMARKS.md, "Served path"). At most ``max_queue`` requests
    wait; beyond that ``submit`` raises ``Busy`` at once."""

    def __init__(self, n: int, max_queue: int = 64):
        self._pool = ThreadPoolExecutor(max(1, n), thread_name_prefix="privmed-worker")
        self._admitted = threading.BoundedSemaphore(max(1, n) + max(0, max_queue))

    def submit(self, fn, *args, **kwargs) -> Future:
        if not self._admitted.acquire(blocking=False):
            raise Busy()
        try:
            fut = self._pool.submit(fn, *args, **kwargs)
        except BaseException:
            self._admitted.release()
            raise
        fut.add_done_callback(lambda _: self._admitted.release())
        return fut

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _forward_slots() -> threading.Semaphore:
    """Forwards run at once without the batcher: ``PRIVMED_BATCH_WORKERS`` (1 unless set; ``privmed api``
    sets one per core), the cores being shared by all."""
    n = settings().batch_workers or 1
    with _BATCHERS_LOCK:
        return _SLOTS.setdefault(n, threading.Semaphore(n))


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
