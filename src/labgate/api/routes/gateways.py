"""/api/v1/gateways: where forwards live, their free ports and dataplane status."""

from __future__ import annotations

from fastapi import APIRouter

from labgate.api.deps import AUTH_ERRORS, LabgateDep, ReaderDep
from labgate.api.schemas import GatewayOut
from labgate.core.gateways import list_gateways as gateways_view
from labgate.core.views import GatewayView

router = APIRouter(prefix="/api/v1/gateways", tags=["gateways"])


@router.get("", response_model=list[GatewayOut], responses=AUTH_ERRORS)
def list_gateways(lg: LabgateDep, who: ReaderDep) -> list[GatewayView]:
    gateways = gateways_view(lg.settings, lg.db, lg.dataplane, who)
    if lg.ddns is not None:
        for g in gateways:
            g.ddns = lg.ddns.gateway_status(g.name)
    return gateways
