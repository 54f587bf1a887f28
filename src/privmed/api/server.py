"""The REST API (FastAPI): predict, models, site calibration, health, metrics, audit log, keys.

Auth is on by default: ``Authorization: Bearer <key>`` (or ``X-API-Key``). Roles: clinician
(predict, models), auditor (audit log, models, per-label metrics), admin (keys, models, site
calibration, per-label metrics). Auth off is only allowed when the server binds loopback, and then only
loopback clients are answered. Every request under ``/v1`` is written to the hash-chained audit log; anonymous refusals
are rate-limited into aggregated rows (``refusals.py``). Bundles are loaded and verified at start.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

import privmed.config as config
from privmed.api.metrics import CONTENT_TYPE_LATEST, Metrics
from privmed.api.openapi_docs import KEY_BODY, PREDICT_BODY, V1, errors
from privmed.api.refusals import RefusalLimiter
from privmed.api.site_upload import router as site_router
from privmed.inference.registry import Registry, UnknownModel
from privmed.inference.service import InputError, analyse
from privmed.api.store import (
    MAX_KEY_DAYS, ROLES, AuditWriteError, ExpiredKey, Principal, RevokedKey, Store, UnknownKey,
)
from privmed.api.translog import Checkpointer, LogConfig
from privmed.data.read import MAX_BYTES
from privmed.errors import BundleError, PrivmedError
from privmed.files import sha256_bytes
from privmed.inference.report import fhir, model_card

log = logging.getLogger("privmed.api")

PERMISSIONS = {"predict": {"clinician"}, "models": {"clinician", "auditor", "admin"}, "audit": {"auditor"},
               "keys": {"admin"}, "metrics": {"auditor", "admin"}, "calibrate": {"admin"}}
FILE_FIELDS = ("file", "files")
TEXT_FIELDS = ("model", "format", "explain", "window", "frame", "redact")


@dataclass
class Settings:
    db_url: str | None = None
    auth: bool = True
    bundles: list = field(default_factory=list)
    scan_default_bundles: bool = True
    max_file_bytes: int = MAX_BYTES
    max_request_bytes: int = MAX_BYTES + 2 * 2**20
    max_files: int = 16
    max_site_bytes: int = 512 * 2**20  # a site calibration's zip; it may unpack to 4x this
    host: str | None = None  # the bind address; auth off requires a loopback one
    bundle_pubkey: str | None = None  # Ed25519 public key: serve only bundles signed with it
    refusal_burst: int = 20  # anonymous refusals logged one by one per interval; the rest aggregated
    refusal_interval_s: float = 60.0
    translog: LogConfig | None = None  # signed checkpoints of the audit log (off when None or unset)

    @classmethod
    def from_env(cls, **over) -> "Settings":
        env = config.settings()
        s = cls(db_url=env.db_url.get_secret_value() if env.db_url else None, auth=env.api_auth,
                bundle_pubkey=env.bundle_pubkey, translog=LogConfig.from_env())
        if env.max_upload_mb:
            s.max_file_bytes = int(env.max_upload_mb * 2**20)
            s.max_request_bytes = s.max_file_bytes + 2 * 2**20
        for k, v in over.items():
            if v is not None:
                setattr(s, k, v)
        return s


class _TooLarge(Exception):
    pass


def _err(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(settings: Settings | None = None) -> FastAPI:
    """Raises ``PrivmedError`` (auth off on a non-loopback bind) or ``BundleError`` (a bundle that does
    not load or verify, named with the reason): better not to start than to 500 on every request."""
    settings = settings or Settings.from_env()
    if not settings.auth and not is_loopback(settings.host):
        raise PrivmedError(f"refusing to serve without authentication on host {settings.host or '(not given)'}: "
                           "auth off (PRIVMED_API_AUTH=off / --no-auth) is only allowed when binding 127.0.0.1, "
                           "::1 or localhost")
    store = Store(settings.db_url)
    checkpointer = Checkpointer.from_config(store, settings.translog)  # refuses a half-configured sink
    registry = Registry(settings.bundles, settings.scan_default_bundles, settings.bundle_pubkey)
    registry.load_all()
    metrics = Metrics(lambda: registry.loaded)
    refusals = RefusalLimiter(settings.refusal_burst, settings.refusal_interval_s)
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        held = refusals.drain()  # counts not yet written when the server stops
        if held:
            _append_held(store, held)

    app = FastAPI(lifespan=lifespan, title="privmed API", version="1", description="Differentially private medical image "
                  "classification. Research use only; not a medical device.")
    app.state.store, app.state.registry, app.state.metrics, app.state.settings = store, registry, metrics, settings
    app.state.checkpointer = checkpointer

    # ---------- auth
    def principal(request: Request) -> Principal:
        if not settings.auth:
            return Principal(None, "*")
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
        try:
            p = store.authenticate(key)
        except ExpiredKey as e:  # the right secret: logged under its key id, like any use of the key
            request.state.principal = Principal(e.key_id, e.role)
            raise HTTPException(401, str(e), headers={"WWW-Authenticate": "Bearer"}) from None
        if p is None:
            request.state.audit["detail"] = "missing API key" if not key else "invalid API key"
            raise HTTPException(401, "missing or invalid API key: send 'Authorization: Bearer <key>' "
                                     "(create one with `privmed keys create --role clinician`)" if not key
                                else "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        request.state.principal = p
        return p

    def require(action: str):
        def dep(request: Request, p: Principal = Depends(principal)) -> Principal:
            if settings.auth and p.role not in PERMISSIONS[action]:
                raise HTTPException(403, f"role '{p.role}' may not {action}; this needs role "
                                         f"{' or '.join(sorted(PERMISSIONS[action]))}")
            return p
        return dep

    # ---------- audit + metrics middleware
    @app.middleware("http")
    async def audit_mw(request: Request, call_next):
        t0 = time.perf_counter()
        request.state.audit = {}
        client = request.client.host if request.client else None
        if not settings.auth and not is_loopback(client):  # defence in depth behind the bind check
            return JSONResponse({"detail": "this server runs without authentication and answers loopback "
                                           "clients only"}, status_code=403)
        try:
            response = await call_next(request)
            status = response.status_code
        except Exception:  # pragma: no cover - last resort; handlers map every known error
            log.exception("unhandled error")
            response = JSONResponse({"detail": "internal error; the request was logged"}, status_code=500)
            status = 500
        seconds = time.perf_counter() - t0
        route_path = getattr(request.scope.get("route"), "path", None) or "unmatched"
        refused = None
        if request.url.path.startswith("/v1") or status >= 400:
            refused = await _audit(store, checkpointer, refusals, request, status, seconds, route_path)
        status = refused.status_code if refused else status  # metrics count what the client got
        metrics.observe_request(request.method, route_path, status, seconds)
        if 400 <= status < 500 and route_path == "/v1/predict":
            metrics.observe_input_error(status)
        return refused or response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        a = getattr(request.state, "audit", None)
        if isinstance(a, dict):
            a.setdefault("detail", str(exc.detail)[:500])
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{loc or 'request'}: {e.get('msg')}")
        detail = "invalid request: " + "; ".join(parts)
        getattr(request.state, "audit", {}).setdefault("detail", detail[:500])
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def starlette_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}; see /docs"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    # ---------- open endpoints
    @app.get("/health")
    def health():
        return {"status": "ok", "models": len(registry.entries()), "auth": settings.auth}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prom():  # aggregates only; never per-label counts (see metrics.py)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/metrics", response_class=PlainTextResponse, responses=errors(*V1))
    def prom_private(request: Request, p: Principal = Depends(require("metrics"))):
        return Response(metrics.render(private=True), media_type=CONTENT_TYPE_LATEST)

    # ---------- models
    @app.get("/v1/models", responses=errors(*V1))
    def list_models(request: Request, p: Principal = Depends(require("models"))):
        return {"models": [_summary(e, registry.site(e), registry.runtime(e)) for e in registry.entries()]}

    @app.get("/v1/models/{model_ref}", responses=errors(404, 422, *V1))
    def get_model(model_ref: str, request: Request, p: Principal = Depends(require("models"))):
        try:
            e = registry.find(model_ref)
        except UnknownModel as ex:
            raise _err(404, str(ex)) from None
        request.state.audit.update(model_id=e["id"], model_version=e["metadata"].get("weights_sha256"))
        return model_card(e["metadata"], e["name"], registry.site(e))

    app.include_router(site_router(registry, settings.max_site_bytes, require("calibrate")))

    # ---------- predict
    @app.post("/v1/predict", responses=errors(400, 404, 413, 415, 422, *V1), openapi_extra=PREDICT_BODY)
    async def predict(request: Request, p: Principal = Depends(require("predict")),
                      source: Literal["file", "camera"] = Query(
                          "file", description="'camera': a phone photo of a film or monitor; the film is found "
                                              "and rectified before the quality gate (result: image.rectified)")):
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise _err(415, f"send images as multipart/form-data (field 'file'), not '{ctype or 'no content type'}'")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_request_bytes:
            raise _err(413, f"request body is {int(declared) / 2**20:.1f} MiB, over the "
                            f"{settings.max_request_bytes / 2**20:.0f} MiB limit")
        # stream the body into the multipart parser (files spool to disk past 1 MiB) while counting,
        # instead of buffering it whole and copying it: a body is never held in memory more than once
        seen, receive = 0, request.receive

        async def limited():
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > settings.max_request_bytes:
                raise _TooLarge()
            return msg

        try:
            form = await Request(request.scope, limited).form(max_files=settings.max_files, max_fields=10)
        except _TooLarge:
            raise _err(413, f"request body is over the {settings.max_request_bytes / 2**20:.0f} MiB limit") from None
        except StarletteHTTPException as e:
            if "too many files" in str(e.detail).lower():
                raise _err(413, f"too many files in one request; the limit is {settings.max_files}") from None
            raise _err(400, f"malformed multipart body: {e.detail}") from None
        except Exception as e:
            raise _err(400, f"malformed multipart body ({type(e).__name__}); send multipart/form-data") from None
        unknown = sorted(set(form.keys()) - set(FILE_FIELDS) - set(TEXT_FIELDS))
        uploads = [v for k in FILE_FIELDS for v in form.getlist(k)]
        if unknown and not uploads:
            raise _err(400, f"unknown form field(s) {', '.join(repr(u) for u in unknown)}; send the image(s) in "
                            "the field 'file' (and optionally 'model', 'format', 'explain', 'window', 'frame')")
        if unknown:
            raise _err(400, f"unknown form field(s) {', '.join(repr(u) for u in unknown)}; allowed: "
                            f"{', '.join(FILE_FIELDS + TEXT_FIELDS)}")
        if not uploads:
            raise _err(400, "no image: send one or more files in the multipart field 'file'")
        if any(not isinstance(u, UploadFile) for u in uploads):
            raise _err(400, "the field 'file' must be a file upload, not a text value")
        if len(uploads) > settings.max_files:
            raise _err(413, f"{len(uploads)} files in one request; the limit is {settings.max_files}")
        fmt = str(form.get("format") or "json").lower()
        if fmt not in ("json", "fhir"):
            raise _err(400, f"format must be 'json' or 'fhir', got '{fmt}'")
        explain_raw = str(form.get("explain") or "false").lower()
        if explain_raw not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise _err(400, f"explain must be true or false, got '{explain_raw}'")
        explain = explain_raw in ("1", "true", "yes", "on")
        redact_raw = str(form.get("redact") or "false").lower()
        if redact_raw not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise _err(400, f"redact must be true or false, got '{redact_raw}'")
        redact = redact_raw in ("1", "true", "yes", "on")
        window, frame = _dicom_fields(form)
        model_ref = form.get("model")
        if model_ref is not None and not isinstance(model_ref, str):
            raise _err(400, "the field 'model' must be text (a model id or name)")
        try:
            entry = registry.find(model_ref)
        except UnknownModel as e:
            raise _err(404 if model_ref else 400, str(e)) from None
        try:
            model = await run_in_threadpool(registry.model, entry)
        except BundleError as e:
            log.error("model %s unavailable: %s", entry["id"], e)
            raise _err(503, f"model '{entry['id']}' is unavailable: {e}") from None
        meta = model.metadata
        audit = request.state.audit
        audit.update(model_id=entry["id"], model_version=meta.get("weights_sha256"),
                     epsilon=(meta.get("privacy") or {}).get("epsilon"))
        audit["input_sha256"] = []
        results = []
        for i, u in enumerate(uploads):  # one upload in memory at a time
            await u.seek(0)
            data = await u.read()
            audit["input_sha256"].append(sha256_bytes(data))
            try:
                res, _ = await run_in_threadpool(analyse, model, data, filename=u.filename, explain=explain,
                                                 max_bytes=settings.max_file_bytes, window=window, frame=frame,
                                                 source=source, redact=redact)
            except InputError as e:
                prefix = f"file {i + 1} of {len(uploads)}: " if len(uploads) > 1 else ""
                raise _err(e.status, prefix + e.detail) from None
            del data
            results.append(res)
            metrics.observe_prediction(entry["id"], res["label"], res["abstain"])
        audit["output"] = [{"label": r["label"], "probabilities": {k: round(v, 6) for k, v in r["probabilities"].items()},
                            "abstain": r["abstain"], "ood_score": r.get("ood_score")} for r in results]
        card = model_card(meta, entry["name"], model.site)
        if fmt == "fhir":
            return JSONResponse(fhir(results, card), media_type="application/fhir+json")
        return {"model": {k: card[k] for k in ("id", "name", "task", "version", "classes", "privacy", "intended_use",
                                               "site_calibration")},
                "backend": getattr(model, "backend", "torch"), "results": results}

    # ---------- audit
    @app.get("/v1/audit", responses=errors(422, *V1))
    def audit_rows(request: Request, after_seq: int = Query(0, ge=0, le=2**62), limit: int = Query(100, ge=1, le=1000),
                   p: Principal = Depends(require("audit"))):
        rows = store.rows(after_seq, limit)
        for r in rows:
            for k in ("input_sha256", "output"):
                if r.get(k):
                    r[k] = json.loads(r[k])
        return {"rows": rows, "next_after_seq": rows[-1]["seq"] if rows else after_seq}

    @app.get("/v1/audit/verify", responses=errors(*V1))
    def audit_verify(request: Request, p: Principal = Depends(require("audit"))):
        return store.verify()

    # ---------- keys
    @app.post("/v1/keys", status_code=201, responses=errors(400, *V1), openapi_extra=KEY_BODY)
    async def create_key(request: Request, p: Principal = Depends(require("keys"))):
        try:
            body = await request.json()
        except Exception:
            raise _err(400, "send a JSON body like {\"role\": \"clinician\", \"label\": \"ward 3\"}") from None
        if not isinstance(body, dict) or body.get("role") not in ROLES:
            raise _err(400, f"'role' must be one of {', '.join(ROLES)}")
        label = body.get("label")
        if label is not None and (not isinstance(label, str) or len(label) > 200):
            raise _err(400, "'label' must be text of at most 200 characters")
        key_id, key = store.create_key(body["role"], label, _expires_days(body))
        request.state.audit["output"] = {"created_key_id": key_id, "role": body["role"]}
        return {"key_id": key_id, "role": body["role"], "key": key,
                "expires_at": store.key_info(key_id)["expires_at"],
                "note": "store this key now: it is not kept and cannot be shown again"}

    @app.get("/v1/keys", responses=errors(*V1))
    def list_keys(request: Request, p: Principal = Depends(require("keys"))):
        return {"keys": store.list_keys()}

    @app.delete("/v1/keys/{key_id}", responses=errors(404, 422, *V1))
    def revoke_key(key_id: str, request: Request, p: Principal = Depends(require("keys"))):
        if not store.revoke_key(key_id):
            raise _err(404, f"no key with id '{key_id}'")
        request.state.audit["output"] = {"revoked_key_id": key_id}
        return {"key_id": key_id, "revoked": True}

    @app.post("/v1/keys/{key_id}/rotate", status_code=201, responses=errors(400, 404, 422, *V1))
    def rotate_key(key_id: str, request: Request,
                   grace_hours: float = Query(24, ge=0, le=720, description="hours the old key keeps working "
                                              "(never past its own expiry), so that its clients can switch"),
                   expires_days: int = Query(90, ge=1, le=MAX_KEY_DAYS, description="days until the new key expires"),
                   never_expires: bool = Query(False, description="the new key never expires (overrides "
                                               "expires_days; not recommended)"),
                   p: Principal = Depends(require("keys"))):
        try:
            new_id, key = store.rotate_key(key_id, grace_hours, None if never_expires else expires_days)
        except UnknownKey as e:
            raise _err(404, str(e)) from None
        except RevokedKey as e:
            raise _err(400, str(e)) from None
        new, old = store.key_info(new_id), store.key_info(key_id)
        request.state.audit["output"] = {"rotated_key_id": key_id, "created_key_id": new_id, "role": new["role"]}
        return {"key_id": new_id, "role": new["role"], "key": key, "expires_at": new["expires_at"],
                "replaces": key_id, "old_key_expires_at": old["expires_at"],
                "note": "store this key now: it is not kept and cannot be shown again; the old key stops "
                        f"working at {old['expires_at']}"}

    return app


def _expires_days(body: dict) -> int | None:
    """POST /v1/keys: 'expires_days' (1..MAX_KEY_DAYS, default 90), or 'never_expires': true (overrides it)."""
    never, days = body.get("never_expires", False), body.get("expires_days", 90)
    if not isinstance(never, bool):
        raise _err(400, "'never_expires' must be true or false")
    if never:
        return None
    whole = isinstance(days, int) or (isinstance(days, float) and days.is_integer())  # JSON: 30.0 is 30
    if isinstance(days, bool) or not whole or not 1 <= days <= MAX_KEY_DAYS:
        raise _err(400, f"'expires_days' must be a whole number of days from 1 to {MAX_KEY_DAYS} (or send "
                        "\"never_expires\": true for a key that never expires)")
    return int(days)


def _dicom_fields(form) -> tuple[str | None, int | None]:
    """Optional 'window' (file|lung|mediastinal) and 'frame' (index into a multi-frame DICOM)."""
    from privmed.data.dicom import WINDOW_CHOICES

    window, frame = form.get("window"), form.get("frame")
    if window is not None and (not isinstance(window, str) or window.lower() not in WINDOW_CHOICES):
        raise _err(400, f"window must be one of {', '.join(WINDOW_CHOICES)}, got '{window}'")
    if frame is not None and (not isinstance(frame, str) or not frame.strip().isdigit()):
        raise _err(400, f"frame must be a whole number >= 0 (the first frame is 0), got '{frame}'")
    return (window.lower() if window else None), (int(frame) if frame is not None else None)


async def _audit(store: Store, checkpointer: Checkpointer | None, refusals: RefusalLimiter, request: Request,
                 status: int, seconds: float, route_path: str) -> JSONResponse | None:
    """Write the request's audit row (and a signed checkpoint when one is due). None when written; else
    the 503 that replaces the answer, saying why: nothing is served without its row."""
    a = getattr(request.state, "audit", {}) or {}
    p = getattr(request.state, "principal", None)
    log_it, held = (True, refusals.due()) if p or status < 400 else refusals.admit(status)
    try:
        if held:
            await run_in_threadpool(_append_held, store, held)
        if log_it:
            row = await run_in_threadpool(
                store.append, key_id=p.key_id if p else None, role=p.role if p else None, method=request.method,
                path=route_path if route_path != "unmatched" else request.url.path[:200], status=status,
                latency_ms=seconds * 1000, model_id=a.get("model_id"), model_version=a.get("model_version"),
                epsilon=a.get("epsilon"), input_sha256=a.get("input_sha256"), output=a.get("output"),
                detail=a.get("detail"))
    except AuditWriteError as e:
        log.error("%s", e)
        return JSONResponse({"detail": f"{e}; request refused"}, 503)
    except Exception:
        log.exception("audit log append failed")
        return JSONResponse({"detail": "the audit log could not be written; request refused"}, 503)
    if checkpointer and log_it and not await _checkpoint(checkpointer, row["seq"]):
        return JSONResponse({"detail": "the audit log's signed checkpoint could not be written (checkpoint sink, "
                                       "witness, timestamp authority or key unavailable); request refused"}, 503)
    return None


async def _checkpoint(checkpointer: Checkpointer, seq: int) -> bool:
    """Sign a checkpoint when one is due after row ``seq``; False when it could not be written. The
    caller then fails closed: the row is written but the answer is not served unsigned, and every
    later request retries the checkpoint until the sink takes it."""
    try:
        await run_in_threadpool(checkpointer.after_append, seq)
        return True
    except Exception:
        log.exception("signed audit checkpoint failed")
        return False


def _append_held(store: Store, held: dict) -> None:
    for status, n in sorted(held.items()):
        store.append(method="*", path="(anonymous refusals, aggregated)", status=status, latency_ms=0.0,
                     detail=f"{n} further anonymous refusals with status {status} in the last interval, "
                            "counted rather than logged one by one")


def _summary(e: dict, site: dict | None = None, runtime: str | None = None) -> dict:
    from privmed.inference import site as site_calibration
    from privmed.inference.intended_use import for_bundle
    from privmed.privacy.ledger import statement

    m = e["metadata"]
    p = m.get("privacy") or {}
    return {"id": e["id"], "name": e["name"], "task": m.get("task"), "dataset": m.get("dataset"),
            "classes": m.get("classes"), "architecture": (m.get("model") or {}).get("name"),
            "version": m.get("weights_sha256"), "epsilon": p.get("epsilon"), "delta": p.get("delta"),
            "unit_of_privacy": p.get("unit_of_privacy"), "neighbouring_relation": p.get("neighbouring_relation"),
            "privacy_statement": statement(m), "intended_use": for_bundle(m),
            "site_calibration": site_calibration.summary(site) if site else None,
            "ood": bool(m.get("ood")), "onnx": bool((m.get("onnx") or {}).get("faster")), "runtime": runtime,
            # a bundle loaded at start whose files went bad stays listed; predict on it answers 503
            "available": not e.get("broken")}


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None, log_level: str = "info",
          banner: str | None = None):
    import uvicorn

    threads = config.settings().torch_threads
    if threads:  # on shared CPUs one intra-op thread often serves better
        import torch

        torch.set_num_threads(threads)
    settings = settings or Settings.from_env()
    settings.host = host
    app = create_app(settings)  # refuses (auth off off-loopback, bad bundle) before anything is announced
    if banner:
        import sys

        print(banner, file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
