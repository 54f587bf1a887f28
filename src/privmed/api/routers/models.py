"""``/v1/models``: the bundles this server serves, as summaries and as model cards."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request

from privmed.api.auth import require
from privmed.api.openapi_docs import V1, errors
from privmed.inference import site as site_calibration
from privmed.inference.intended_use import for_bundle
from privmed.inference.registry import UnknownModel
from privmed.inference.report import model_card
from privmed.privacy.ledger import statement

router = APIRouter()


@router.get("/v1/models", responses=errors(*V1))
def list_models(request: Request, p=Depends(require("models"))):
    registry = request.app.state.registry
    return {"models": [summary(e, registry.site(e), registry.runtime(e)) for e in registry.entries()]}


@router.get("/v1/models/{model_ref}", responses=errors(404, 422, *V1))
def get_model(model_ref: str, request: Request, p=Depends(require("models"))):
    registry = request.app.state.registry
    try:
        e = registry.find(model_ref)
    except UnknownModel as ex:
        raise HTTPException(404, str(ex)) from None
    request.state.audit.update(model_id=e["id"], model_version=e["metadata"].get("weights_sha256"))
    return model_card(e["metadata"], e["name"], registry.site(e))


def summary(e: dict, site: dict | None = None, runtime: str | None = None) -> dict:
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
