"""/api/v1/ddns: where dynamic DNS updates go and how they fare (docs/ddns.md). Never the TSIG secret."""

from __future__ import annotations

from fastapi import APIRouter

from labgate.api.deps import AUTH_ERRORS, LabgateDep, PrincipalDep
from labgate.api.schemas import DdnsStatusOut

router = APIRouter(prefix="/api/v1/ddns", tags=["ddns"])


@router.get("", response_model=DdnsStatusOut, responses=AUTH_ERRORS)
def ddns_status(lg: LabgateDep, who: PrincipalDep) -> dict:
    if lg.ddns is None:
        return {"configured": False}
    return lg.ddns.status()
