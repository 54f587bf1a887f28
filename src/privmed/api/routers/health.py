"""Open health and metrics endpoints, and the role-gated per-label metrics."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response

from privmed.api.auth import require
from privmed.api.metrics import CONTENT_TYPE_LATEST
from privmed.api.openapi_docs import V1, errors

router = APIRouter()


@router.get("/health")
def health(request: Request):
    s = request.app.state
    return {"status": "ok", "models": len(s.registry.entries()), "auth": s.settings.auth}


@router.get("/metrics", response_class=PlainTextResponse)
def prom(request: Request):  # aggregates only; never per-label counts (see metrics.py)
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/metrics", response_class=PlainTextResponse, responses=errors(*V1))
def prom_private(request: Request, p=Depends(require("metrics"))):
    return Response(request.app.state.metrics.render(private=True), media_type=CONTENT_TYPE_LATEST)
