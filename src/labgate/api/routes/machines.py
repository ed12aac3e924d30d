"""/api/v1/machines: the IPAM view, one entry per machine name with its addresses and forwards."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from labgate.api.deps import LabgateDep, PrincipalDep
from labgate.api.routes.pagination import Limit, Offset, page
from labgate.api.schemas import MachinePage
from labgate.core.machines import list_machines as machines_view

router = APIRouter(prefix="/api/v1/machines", tags=["machines"])


@router.get("", response_model=MachinePage)
def list_machines(
    request: Request,
    lg: LabgateDep,
    who: PrincipalDep,
    name: Annotated[str | None, Query(max_length=63)] = None,
    kind: Annotated[str | None, Query(max_length=32)] = None,
    owner: Annotated[str | None, Query(max_length=64, description="admins only")] = None,
    status: Annotated[Literal["up", "down", "unknown"] | None, Query(description="down = bad records")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> dict:
    machines = machines_view(lg.db, lg.dataplane, who, name=name, kind=kind, owner=owner, status=status)
    return page(request, len(machines), machines[offset:offset + limit], limit, offset)
