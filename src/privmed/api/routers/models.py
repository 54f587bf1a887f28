"""``/v1/models``: the bundles this server serves, as summaries and as model cards."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request

from privmed.api.auth import require
from privmed.api.openapi_docs import V1, errors
from privmed.inference.registry import UnknownModel
from privmed.inference.report import model_card

router = APIRouter()


@router.get("/v1/models", responses=errors(*V1))
def list_models(request: Request, p=Depends(require("models"))):
    registry = request.app.state.registry
    return {"models": registry.summaries()}


@router.get("/v1/models/{model_ref}", responses=errors(404, 422, *V1))
def get_model(model_ref: str, request: Request, p=Depends(require("models"))):
    registry = request.app.state.registry
    try:
        e = registry.find(model_ref)
    except UnknownModel as ex:
        raise HTTPException(404, str(ex)) from None
    request.state.audit.update(model_id=e["id"], model_version=e["metadata"].weights_sha256)
    return model_card(e["metadata"], e["name"], registry.site(e))

