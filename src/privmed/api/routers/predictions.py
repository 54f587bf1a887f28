"""``POST /v1/predict``: one or more images in a multipart body, each decoded once by
``inference.service.analyse``; the typed errors of the upload path become statuses through
``api.status``. The body is streamed into the parser under the request limit (files spool to disk
past 1 MiB) and its fields are checked by hand so that every refusal names the field; the body is
declared for the OpenAPI by ``openapi_docs.PredictForm``."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from privmed.api.auth import require
from privmed.api.openapi_docs import PREDICT_BODY, V1, PredictForm, errors
from privmed.api.status import as_http
from privmed.data.dicom import WINDOW_CHOICES
from privmed.errors import BundleError, PrivmedError
from privmed.files import sha256_bytes
from privmed.inference.registry import UnknownModel
from privmed.inference.report import fhir
from privmed.inference.service import analyse

log = logging.getLogger("privmed.api")
router = APIRouter()
FILE_FIELDS = ("file", "files")
TEXT_FIELDS = tuple(k for k in PredictForm.model_fields if k != "file")
BOOLEANS = ("1", "0", "true", "false", "yes", "no", "on", "off")
CARD_KEYS = ("id", "name", "task", "version", "classes", "privacy", "intended_use", "site_calibration")


class _TooLarge(Exception):
    pass


@dataclass
class Options:
    fmt: str
    explain: bool
    redact: bool
    window: str | None
    frame: int | None
    model_ref: str | None


@router.post("/v1/predict", responses=errors(400, 404, 413, 415, 422, *V1), openapi_extra=PREDICT_BODY)
async def predict(request: Request, p=Depends(require("predict")),
                  source: Literal["file", "camera"] = Query(
                      "file", description="'camera': a phone photo of a film or monitor; the film is found "
                                          "and rectified before the quality gate (result: image.rectified)")):
    settings = request.app.state.settings
    form = await read_form(request, settings)
    uploads = _uploads(form, settings.max_files)
    opts = _options(form)
    # the whole request in one prediction worker (``service.Workers``): a full queue raises Busy (503)
    entry, model, results = await asyncio.wrap_future(request.app.state.workers.submit(
        _analyse_all, request, uploads, opts, settings.max_file_bytes, source))
    audit = request.state.audit
    audit["output"] = [{"label": r["label"], "probabilities": {k: round(v, 6) for k, v in r["probabilities"].items()},
                        "abstain": r["abstain"], "ood_score": r.get("ood_score")} for r in results]
    card = model.card(entry["name"])
    if opts.fmt == "fhir":
        return JSONResponse(fhir(results, card), media_type="application/fhir+json")
    return _json({"model": {k: card[k] for k in CARD_KEYS}, "backend": getattr(model, "backend", "torch"),
                  "results": results})


def _json(content: dict) -> JSONResponse:
    """The answer FastAPI would render from ``content``, without its ``jsonable_encoder`` walk (a tenth
    of the request's Python time): the result holds plain JSON types; anything else takes the encoder."""
    try:
        return JSONResponse(content)
    except TypeError:
        return JSONResponse(jsonable_encoder(content))


def _analyse_all(request: Request, uploads: list[UploadFile], opts: Options, max_bytes: int,
                 source: str) -> tuple[dict, object, list[dict]]:
    """In a prediction worker (it reads the bundle folders): the model asked for (re-verified when its
    files changed) and each upload's result, forward included, one upload in memory at a time; the
    audit row learns the model and each input's hash first."""
    registry = request.app.state.registry
    try:
        entry = registry.find(opts.model_ref)
    except UnknownModel as e:
        raise HTTPException(404 if opts.model_ref else 400, str(e)) from None
    try:
        model = registry.model(entry)
    except BundleError as e:
        log.error("model %s unavailable: %s", entry["id"], e)
        raise HTTPException(503, f"model '{entry['id']}' is unavailable: {e}") from None
    meta, audit = model.bundle, request.state.audit
    audit.update(model_id=entry["id"], model_version=meta.weights_sha256, epsilon=meta.ledger.epsilon,
                 input_sha256=[])
    return entry, model, [_one(request, model, entry, u, i, len(uploads), opts, max_bytes, source)
                          for i, u in enumerate(uploads)]


def _one(request: Request, model, entry: dict, upload: UploadFile, i: int, n: int, opts: Options,
         max_bytes: int, source: str) -> dict:
    upload.file.seek(0)
    data = upload.file.read()
    digest = sha256_bytes(data)  # once: the audit row and the result carry the same hash
    request.state.audit["input_sha256"].append(digest)
    try:
        res, _ = analyse(model, data, filename=upload.filename, explain=opts.explain, max_bytes=max_bytes,
                         window=opts.window, frame=opts.frame, source=source, redact=opts.redact,
                         input_sha256=digest, batch=False)
    except PrivmedError as e:
        raise as_http(e, f"file {i + 1} of {n}: " if n > 1 else "") from None
    request.app.state.metrics.observe_prediction(entry["id"], res["label"], res["abstain"])
    return res


async def read_form(request: Request, settings):
    """The multipart form, refused past ``settings.max_request_bytes`` while it streams in (413), when
    it is not multipart (415) or malformed (400)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise HTTPException(415, "send images as multipart/form-data (field 'file'), "
                                 f"not '{ctype or 'no content type'}'")
    limit = settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body is {int(declared) / 2**20:.1f} MiB, over the "
                                 f"{limit / 2**20:.0f} MiB limit")
    # count while streaming instead of buffering the body whole: it is never held in memory more than once
    seen, receive = 0, request.receive

    async def limited():
        nonlocal seen
        msg = await receive()
        seen += len(msg.get("body", b""))
        if seen > limit:
            raise _TooLarge()
        return msg

    try:
        return await Request(request.scope, limited).form(max_files=settings.max_files, max_fields=10)
    except _TooLarge:
        raise HTTPException(413, f"request body is over the {limit / 2**20:.0f} MiB limit") from None
    except StarletteHTTPException as e:
        if "too many files" in str(e.detail).lower():
            raise HTTPException(413, f"too many files in one request; the limit is {settings.max_files}") from None
        raise HTTPException(400, f"malformed multipart body: {e.detail}") from None
    except Exception as e:
        raise HTTPException(400, f"malformed multipart body ({type(e).__name__}); send multipart/form-data") from None


def _uploads(form, max_files: int) -> list[UploadFile]:
    unknown = sorted(set(form.keys()) - set(FILE_FIELDS) - set(TEXT_FIELDS))
    uploads = [v for k in FILE_FIELDS for v in form.getlist(k)]
    if unknown and not uploads:
        raise HTTPException(400, f"unknown form field(s) {', '.join(repr(u) for u in unknown)}; send the image(s) "
                                 "in the field 'file' (and optionally 'model', 'format', 'explain', 'window', 'frame')")
    if unknown:
        raise HTTPException(400, f"unknown form field(s) {', '.join(repr(u) for u in unknown)}; allowed: "
                                 f"{', '.join(FILE_FIELDS + TEXT_FIELDS)}")
    if not uploads:
        raise HTTPException(400, "no image: send one or more files in the multipart field 'file'")
    if any(not isinstance(u, UploadFile) for u in uploads):
        raise HTTPException(400, "the field 'file' must be a file upload, not a text value")
    if len(uploads) > max_files:
        raise HTTPException(413, f"{len(uploads)} files in one request; the limit is {max_files}")
    return uploads


def _flag(form, name: str) -> bool:
    raw = str(form.get(name) or "false").lower()
    if raw not in BOOLEANS:
        raise HTTPException(400, f"{name} must be true or false, got '{raw}'")
    return raw in ("1", "true", "yes", "on")


def _options(form) -> Options:
    fmt = str(form.get("format") or "json").lower()
    if fmt not in ("json", "fhir"):
        raise HTTPException(400, f"format must be 'json' or 'fhir', got '{fmt}'")
    explain, redact = _flag(form, "explain"), _flag(form, "redact")
    window, frame = form.get("window"), form.get("frame")
    if window is not None and (not isinstance(window, str) or window.lower() not in WINDOW_CHOICES):
        raise HTTPException(400, f"window must be one of {', '.join(WINDOW_CHOICES)}, got '{window}'")
    if frame is not None and (not isinstance(frame, str) or not frame.strip().isdigit()):
        raise HTTPException(400, f"frame must be a whole number >= 0 (the first frame is 0), got '{frame}'")
    model_ref = form.get("model")
    if model_ref is not None and not isinstance(model_ref, str):
        raise HTTPException(400, "the field 'model' must be text (a model id or name)")
    return Options(fmt, explain, redact, window.lower() if window else None,
                   int(frame) if frame is not None else None, model_ref)
