"""/api/v1/audit: the audit trail (every change of a forward, a token or an owner's limits: who, token, address,
when, before/after), admins only, oldest first, paged like /api/v1/forwards."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from labgate.api.deps import AUTH_ERRORS, AdminDep, LabgateDep
from labgate.api.routes.pagination import Limit, Offset, page
from labgate.api.schemas import AuditPage, ErrorOut, Rfc3339
from labgate.core.audit import page_audit

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("", response_model=AuditPage, responses={**AUTH_ERRORS, 422: {"model": ErrorOut}})
def list_audit(
    request: Request,
    lg: LabgateDep,
    who: AdminDep,
    actor: Annotated[str | None, Query(max_length=64, description="who made the change (a token's owner)")] = None,
    action: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z][a-z_]*\.[a-z][a-z_]*$",
                                        description="forward.create, forward.update, forward.delete, "
                                                    "token.create, token.revoke, limits.update")] = None,
    object_type: Literal["forward", "token", "limits"] | None = None,
    object_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    since: Annotated[Rfc3339 | None,
                     Query(description="records at or after this time (RFC 3339, with its offset)")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> dict:
    total, results = page_audit(lg.db, actor=actor, action=action, object_type=object_type, object_id=object_id,
                                since=since, limit=limit, offset=offset)
    return page(request, total, results, limit, offset)
