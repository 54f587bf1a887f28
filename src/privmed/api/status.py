"""Exceptions to HTTP answers, in one place: the typed errors of the upload path and the service map
to statuses by type (``STATUS``), never by the words of their message; every error answer is
``{"detail": ...}`` and its detail goes into the request's audit row."""
from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from privmed.errors import (
    ArchiveError,
    ArchiveTooLarge,
    BundleError,
    EmptyUpload,
    ImageReadError,
    PrivacyBudgetError,
    PrivmedError,
    Unavailable,
    Undecodable,
    UnsupportedFormat,
    UploadTooLarge,
    WrongModality,
)
from privmed.inference.registry import UnknownModel

# the most specific type first wins (looked up along the exception's MRO)
STATUS: dict[type, int] = {
    ArchiveTooLarge: 413,
    ArchiveError: 400,
    EmptyUpload: 400,
    UploadTooLarge: 413,
    UnsupportedFormat: 415,
    Undecodable: 422,
    WrongModality: 422,
    ImageReadError: 422,  # a usable format asked for something it does not hold (frame, window)
    UnknownModel: 404,
    PrivacyBudgetError: 409,
    BundleError: 503,
    Unavailable: 503,
    PrivmedError: 422,
}


def status_for(exc: BaseException) -> int:
    for t in type(exc).__mro__:
        if t in STATUS:
            return STATUS[t]
    raise TypeError(f"no HTTP status for {type(exc).__name__}")


def as_http(exc: PrivmedError, prefix: str = "") -> HTTPException:
    return HTTPException(status_for(exc), prefix + str(exc))


def _note(request: Request, detail) -> None:
    a = getattr(request.state, "audit", None)
    if isinstance(a, dict):
        a.setdefault("detail", str(detail)[:500])


async def http_error(request: Request, exc: HTTPException):
    _note(request, exc.detail)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def privmed_error(request: Request, exc: PrivmedError):
    return await http_error(request, as_http(exc))


async def validation_error(request: Request, exc: RequestValidationError):
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {e.get('msg')}")
    detail = "invalid request: " + "; ".join(parts)
    _note(request, detail)
    return JSONResponse({"detail": detail}, status_code=422)


def allowed_methods(app, path: str) -> set[str]:
    """Every method the OpenAPI documents for ``path`` (over all the templates that match it; HEAD
    with GET), for a 405's ``Allow``: routes of one path live in different routers, and Starlette
    names only the first route it tried."""
    templates = getattr(app.state, "allow_templates", None)
    if templates is None:
        templates = app.state.allow_templates = [
            (compile_path(t)[0], {m.upper() for m in ops}) for t, ops in app.openapi().get("paths", {}).items()]
    methods = set().union(*(ms for regex, ms in templates if regex.match(path)))
    return methods | ({"HEAD"} if "GET" in methods else set())


async def starlette_error(request: Request, exc: StarletteHTTPException):
    detail, headers = exc.detail, exc.headers
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint: {request.method} {request.url.path}; see /docs"
    elif exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
        given = {m.strip() for m in (headers or {}).get("Allow", "").split(",") if m.strip()}
        allow = sorted(given | allowed_methods(request.app, request.url.path))
        headers = {**(headers or {}), "Allow": ", ".join(allow)} if allow else headers
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(PrivmedError, privmed_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, starlette_error)
