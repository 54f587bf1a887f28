"""What the OpenAPI schema says beyond the route declarations: every error status a route can answer
(all with ``{"detail": "..."}``), and the bodies that are read by hand for clear 4xx messages and a
streamed size limit (the multipart body of ``/v1/predict``, the JSON of ``POST /v1/keys``, the zip of
a site calibration). Those bodies are declared as pydantic models here and their schema is generated
from the declarations. The schemathesis fuzz test holds the server to this."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from privmed.api.store import MAX_KEY_DAYS, ROLES

ERROR_TEXT = {
    400: "bad request: a missing, unknown or invalid field or parameter",
    401: "missing, invalid, revoked or expired API key",
    403: "the key's role may not do this (or auth is off and the client is not loopback)",
    404: "no such model, key or endpoint",
    409: "a site calibration is already running, or it would pass the site sample's privacy budget",
    413: "upload over the size, pixel or file-count limit",
    415: "not an image, or not multipart/form-data (a site calibration: not application/zip)",
    422: "invalid request parameters, or an image that cannot be decoded or does not fit the model",
    503: "the model's bundle no longer verifies, or the audit log could not be written",
}


class ErrorBody(BaseModel):
    detail: str


def errors(*codes: int) -> dict:
    """``responses=`` for a route: the given error statuses, each with the ``{"detail"}`` body.
    Every ``/v1`` route also answers 401, 403 (auth) and 503 (audit log not writable)."""
    return {c: {"model": ErrorBody, "description": ERROR_TEXT[c]} for c in sorted(set(codes))}


V1 = (401, 403, 503)


class PredictForm(BaseModel):
    """The multipart body of ``POST /v1/predict``."""

    file: list[bytes] = Field(min_length=1, max_length=16, description="one or more PNG, JPEG or DICOM images")
    model: str | None = Field(None, description="model id or bundle name (optional with one bundle)")
    format: Literal["json", "fhir"] = "json"
    explain: bool = Field(False, description="Grad-CAM heat map (JSON only)")
    window: Literal["file", "lung", "mediastinal"] | None = Field(None, description="CT DICOM window")
    frame: int | None = Field(None, ge=0, description="frame of a multi-frame DICOM")
    redact: bool = Field(False, description="black out burned-in text before predicting; the result counts "
                                            "the regions")


class KeyRequest(BaseModel):
    """The JSON body of ``POST /v1/keys``."""

    role: Literal[ROLES]  # type: ignore[valid-type]
    label: str | None = Field(None, max_length=200)
    expires_days: int = Field(90, ge=1, le=MAX_KEY_DAYS, description="days until the key expires")
    never_expires: bool = Field(False, description="the key never expires (overrides expires_days)")


def _plain(schema: dict) -> dict:
    """A field schema without pydantic's titles and ``anyOf [X, null]`` for optional fields (a form
    field is sent or left out; it is never null)."""
    s = {k: v for k, v in schema.items() if k != "title"}
    options = [o for o in s.pop("anyOf", []) if o.get("type") != "null"]
    if len(options) == 1:
        s.update(options[0])
    if s.get("default", 0) is None:
        del s["default"]
    return s


def body(model: type[BaseModel], media_type: str, nullable: tuple[str, ...] = ()) -> dict:
    """``openapi_extra`` declaring ``model`` as the request body; ``nullable`` fields keep their null."""
    schema = model.model_json_schema()
    props = {k: v if k in nullable else _plain(v) for k, v in schema["properties"].items()}
    for k in nullable:
        props[k] = {kk: vv for kk, vv in props[k].items() if kk != "title"}
    return {"requestBody": {"required": True, "content": {media_type: {"schema": {
        "type": "object", "required": schema.get("required", []), "properties": props}}}}}


PREDICT_BODY = body(PredictForm, "multipart/form-data")
KEY_BODY = body(KeyRequest, "application/json", nullable=("label",))
SITE_BODY = {"requestBody": {"required": True, "description": "a zip of <class>/<image> for the bundle's classes: "
                              "the site's labelled sample", "content": {"application/zip": {"schema": {
                                  "type": "string", "format": "binary"}}}}}
