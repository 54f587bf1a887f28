"""Auth as FastAPI dependencies: ``principal`` (the API key's holder, from ``Authorization: Bearer``
or ``X-API-Key``) and ``require(action)`` (the roles that may do it). Auth off: everyone is ``*``."""
from __future__ import annotations

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from privmed.api.store import ExpiredKey, Principal

PERMISSIONS = {"predict": {"clinician"}, "models": {"clinician", "auditor", "admin"}, "audit": {"auditor"},
               "keys": {"admin"}, "metrics": {"auditor", "admin"}, "calibrate": {"admin"}}


async def principal(request: Request) -> Principal:
    if not request.app.state.settings.auth:
        return Principal(None, "*")
    auth = request.headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
    store = request.app.state.store
    try:  # read on every request (a revoked key stops at once); in a thread unless it never waits
        p = store.authenticate(key) if store.reads_never_wait else await run_in_threadpool(store.authenticate, key)
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


_REQUIRE: dict = {}


def require(action: str):
    """The dependency admitting the roles in ``PERMISSIONS[action]`` (one function per action)."""
    if action not in _REQUIRE:
        async def dep(request: Request, p: Principal = Depends(principal)) -> Principal:  # no I/O: no thread hop
            if request.app.state.settings.auth and p.role not in PERMISSIONS[action]:
                raise HTTPException(403, f"role '{p.role}' may not {action}; this needs role "
                                         f"{' or '.join(sorted(PERMISSIONS[action]))}")
            return p
        _REQUIRE[action] = dep
    return _REQUIRE[action]
