"""``/v1/keys``: create, list, revoke and rotate API keys (admin role)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from privmed.api.auth import require
from privmed.api.openapi_docs import KEY_BODY, V1, errors
from privmed.api.store import MAX_KEY_DAYS, ROLES, RevokedKey, UnknownKey

router = APIRouter()


@router.post("/v1/keys", status_code=201, responses=errors(400, *V1), openapi_extra=KEY_BODY)
async def create_key(request: Request, p=Depends(require("keys"))):
    # the body is read by hand (declared in KEY_BODY) so that every refusal is a 400 naming the field
    try:
        body = await request.json()
    except Exception:
        raise HTTPException(400, "send a JSON body like {\"role\": \"clinician\", \"label\": \"ward 3\"}") from None
    if not isinstance(body, dict) or body.get("role") not in ROLES:
        raise HTTPException(400, f"'role' must be one of {', '.join(ROLES)}")
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > 200):
        raise HTTPException(400, "'label' must be text of at most 200 characters")
    store = request.app.state.store
    key_id, key = store.create_key(body["role"], label, _expires_days(body))
    request.state.audit["output"] = {"created_key_id": key_id, "role": body["role"]}
    return {"key_id": key_id, "role": body["role"], "key": key,
            "expires_at": store.key_info(key_id)["expires_at"],
            "note": "store this key now: it is not kept and cannot be shown again"}


@router.get("/v1/keys", responses=errors(*V1))
def list_keys(request: Request, p=Depends(require("keys"))):
    return {"keys": request.app.state.store.list_keys()}


@router.delete("/v1/keys/{key_id}", responses=errors(404, 422, *V1))
def revoke_key(key_id: str, request: Request, p=Depends(require("keys"))):
    if not request.app.state.store.revoke_key(key_id):
        raise HTTPException(404, f"no key with id '{key_id}'")
    request.state.audit["output"] = {"revoked_key_id": key_id}
    return {"key_id": key_id, "revoked": True}


@router.post("/v1/keys/{key_id}/rotate", status_code=201, responses=errors(400, 404, 422, *V1))
def rotate_key(key_id: str, request: Request,
               grace_hours: float = Query(24, ge=0, le=720, description="hours the old key keeps working "
                                          "(never past its own expiry), so that its clients can switch"),
               expires_days: int = Query(90, ge=1, le=MAX_KEY_DAYS, description="days until the new key expires"),
               never_expires: bool = Query(False, description="the new key never expires (overrides "
                                           "expires_days; not recommended)"),
               p=Depends(require("keys"))):
    store = request.app.state.store
    try:
        new_id, key = store.rotate_key(key_id, grace_hours, None if never_expires else expires_days)
    except UnknownKey as e:
        raise HTTPException(404, str(e)) from None
    except RevokedKey as e:
        raise HTTPException(400, str(e)) from None
    new, old = store.key_info(new_id), store.key_info(key_id)
    request.state.audit["output"] = {"rotated_key_id": key_id, "created_key_id": new_id, "role": new["role"]}
    return {"key_id": new_id, "role": new["role"], "key": key, "expires_at": new["expires_at"],
            "replaces": key_id, "old_key_expires_at": old["expires_at"],
            "note": "store this key now: it is not kept and cannot be shown again; the old key stops "
                    f"working at {old['expires_at']}"}


def _expires_days(body: dict) -> int | None:
    """POST /v1/keys: 'expires_days' (1..MAX_KEY_DAYS, default 90), or 'never_expires': true (overrides it)."""
    never, days = body.get("never_expires", False), body.get("expires_days", 90)
    if not isinstance(never, bool):
        raise HTTPException(400, "'never_expires' must be true or false")
    if never:
        return None
    whole = isinstance(days, int) or (isinstance(days, float) and days.is_integer())  # JSON: 30.0 is 30
    if isinstance(days, bool) or not whole or not 1 <= days <= MAX_KEY_DAYS:
        raise HTTPException(400, f"'expires_days' must be a whole number of days from 1 to {MAX_KEY_DAYS} (or send "
                                 "\"never_expires\": true for a key that never expires)")
    return int(days)
