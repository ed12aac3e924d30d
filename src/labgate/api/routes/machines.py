"""/api/v1/machines: the IPAM view, one entry per machine name with its addresses and forwards."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from labgate.api.deps import AUTH_ERRORS, LabgateDep, ReaderDep
from labgate.api.routes.pagination import Limit, Offset, page
from labgate.api.schemas import MachinePage
from labgate.core.machines import list_machines as machines_view

router = APIRouter(prefix="/api/v1/machines", tags=["machines"])


@router.get("", response_model=MachinePage, responses=AUTH_ERRORS)
def list_machines(
    request: Request,
    lg: LabgateDep,
    who: ReaderDep,
    name: Annotated[str | None, Query(max_length=63)] = None,
    kind: Annotated[str | None, Query(max_length=32)] = None,
    owner: Annotated[str | None, Query(max_length=64, description="admins only")] = None,
    status: Annotated[Literal["up", "down", "unknown"] | None, Query(description="down = bad records")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> dict:
    total, machines = machines_view(lg.db, lg.dataplane, who, name=name, kind=kind, owner=owner, status=status,
                                    limit=limit, offset=offset)
    return page(request, total, machines, limit, offset)
