"""``/v1/audit``: the audit log's rows and its verification, for the auditor role."""
from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query, Request

from privmed.api.auth import require
from privmed.api.openapi_docs import V1, errors

router = APIRouter()


@router.get("/v1/audit", responses=errors(422, *V1))
def audit_rows(request: Request, after_seq: int = Query(0, ge=0, le=2**62), limit: int = Query(100, ge=1, le=1000),
               p=Depends(require("audit"))):
    rows = request.app.state.store.rows(after_seq, limit)
    for r in rows:
        for k in ("input_sha256", "output"):
            if r.get(k):
                r[k] = json.loads(r[k])
    return {"rows": rows, "next_after_seq": rows[-1]["seq"] if rows else after_seq}


@router.get("/v1/audit/verify", responses=errors(*V1))
def audit_verify(request: Request, p=Depends(require("audit"))):
    return request.app.state.store.verify()
