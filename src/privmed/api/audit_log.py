"""The audit log as middleware: every request under ``/v1`` (and every refusal) gets its row in the
hash-chained log before its answer leaves; a row that cannot be written (or a signed checkpoint
that is due and cannot be) turns the answer into a 503. Handlers add what the row should say to
``request.state.audit`` (model, input hashes, output, detail). Anonymous refusals are rate-limited
into aggregated rows (``refusals.py``). Also: request metrics, and the loopback-only answer when
auth is off."""
from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from privmed.api.refusals import RefusalLimiter
from privmed.api.store import AuditWriteError, Store
from privmed.api.translog import Checkpointer

log = logging.getLogger("privmed.api")


def is_loopback(host: str | None) -> bool:
    import ipaddress

    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def install(app: FastAPI) -> None:
    app.add_middleware(AuditMiddleware)


class AuditMiddleware:
    """Pure ASGI (no ``BaseHTTPMiddleware``: its extra task and body stream per request cost more CPU
    than the audit row itself). The row is written when the handler starts its answer, before a byte
    of it is sent; a row that cannot be written replaces the answer with its 503."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        scope.setdefault("state", {})["audit"] = {}  # ``request.state.audit`` for the handlers
        request = Request(scope)
        state = request.app.state
        client = scope.get("client")
        if not state.settings.auth and not is_loopback(client[0] if client else None):  # defence in depth
            await JSONResponse({"detail": "this server runs without authentication and answers loopback "
                                          "clients only"}, status_code=403)(scope, receive, send)
            return
        answered, replaced = False, False

        async def send_audited(message) -> None:
            nonlocal answered, replaced
            if message["type"] == "http.response.start":
                answered = True
                refused = await _audited(request, message["status"], t0)
                if refused is not None:
                    replaced = True
                    await refused(scope, receive, send)
                    return
            if not replaced:  # the body of an answer that a 503 replaced is dropped
                await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except Exception:  # pragma: no cover - last resort; handlers map every known error
            if answered:
                raise
            log.exception("unhandled error")
        if not answered:  # an error, or a handler that never answered: a 500, logged like any answer
            response = JSONResponse({"detail": "internal error; the request was logged"}, status_code=500)
            await (await _audited(request, 500, t0) or response)(scope, receive, send)


async def _audited(request: Request, status: int, t0: float) -> JSONResponse | None:
    """The request's row (for ``/v1`` and every refusal) and its metrics; the 503 that replaces the
    answer when the row could not be written, else None."""
    state = request.app.state
    seconds = time.perf_counter() - t0
    route_path = getattr(request.scope.get("route"), "path", None) or "unmatched"
    refused = None
    if request.scope["path"].startswith("/v1") or status >= 400:
        refused = await write_row(state.store, state.checkpointer, state.refusals, request, status, seconds,
                                  route_path)
    status = refused.status_code if refused else status  # metrics count what the client got
    state.metrics.observe_request(request.method, route_path, status, seconds)
    if 400 <= status < 500 and route_path == "/v1/predict":
        state.metrics.observe_input_error(status)
    return refused


async def write_row(store: Store, checkpointer: Checkpointer | None, refusals: RefusalLimiter, request: Request,
                    status: int, seconds: float, route_path: str) -> JSONResponse | None:
    """Write the request's audit row (and a signed checkpoint when one is due). None when written; else
    the 503 that replaces the answer, saying why: nothing is served without its row."""
    a = getattr(request.state, "audit", {}) or {}
    p = getattr(request.state, "principal", None)
    log_it, held = (True, refusals.due()) if p or status < 400 else refusals.admit(status)
    try:
        if held:
            await run_in_threadpool(append_held, store, held)
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


def append_held(store: Store, held: dict) -> None:
    for status, n in sorted(held.items()):
        store.append(method="*", path="(anonymous refusals, aggregated)", status=status, latency_ms=0.0,
                     detail=f"{n} further anonymous refusals with status {status} in the last interval, "
                            "counted rather than logged one by one")
