"""What the OpenAPI schema says about each route beyond FastAPI's defaults: every error status a
route can answer (all with ``{"detail": "..."}``), the multipart body of ``/v1/predict``, the zip
body of a site calibration and the JSON body of ``POST /v1/keys`` (parsed by hand for clear 4xx
messages, so FastAPI cannot see them), and the text/plain Prometheus endpoints. The schemathesis fuzz test holds the server to this."""
from __future__ import annotations

from pydantic import BaseModel

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

TEXT_PLAIN = {200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                    "description": "Prometheus text exposition format"}}

PREDICT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1, "maxItems": 16,
                 "description": "one or more PNG, JPEG or DICOM images"},
        "model": {"type": "string", "description": "model id or bundle name (optional with one bundle)"},
        "format": {"type": "string", "enum": ["json", "fhir"], "default": "json"},
        "explain": {"type": "boolean", "default": False, "description": "Grad-CAM heat map (JSON only)"},
        "window": {"type": "string", "enum": ["file", "lung", "mediastinal"], "description": "CT DICOM window"},
        "frame": {"type": "integer", "minimum": 0, "description": "frame of a multi-frame DICOM"},
        "redact": {"type": "boolean", "default": False,
                   "description": "black out burned-in text before predicting; the result counts the regions"},
    }}}}}}

SITE_BODY = {"requestBody": {"required": True, "description": "a zip of <class>/<image> for the bundle's classes: "
                              "the site's labelled sample", "content": {"application/zip": {"schema": {
                                  "type": "string", "format": "binary"}}}}}
KEY_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object",
    "required": ["role"],
    "properties": {"role": {"type": "string", "enum": list(ROLES)},
                   "label": {"type": ["string", "null"], "maxLength": 200},
                   "expires_days": {"type": "integer", "minimum": 1, "maximum": MAX_KEY_DAYS, "default": 90,
                                    "description": "days until the key expires"},
                   "never_expires": {"type": "boolean", "default": False,
                                     "description": "the key never expires (overrides expires_days)"}}}}}}}
