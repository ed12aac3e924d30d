"""/api/v1/gateways: where forwards live, their free ports and dataplane status."""

from __future__ import annotations

from fastapi import APIRouter

from labgate.api.deps import LabgateDep, PrincipalDep
from labgate.api.schemas import GatewayOut

router = APIRouter(prefix="/api/v1/gateways", tags=["gateways"])


@router.get("", response_model=list[GatewayOut])
def list_gateways(lg: LabgateDep, who: PrincipalDep) -> list[dict]:
    gateways = lg.forwards.gateways()
    for g in gateways:
        cfg = lg.settings.get_gateway(g["name"])
        g["dns_name"] = cfg.dns_name if cfg else None
        g["ddns"] = lg.ddns.gateway_status(g["name"]) if lg.ddns is not None else None
    return gateways
