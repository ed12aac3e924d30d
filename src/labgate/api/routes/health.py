"""/healthz (no authentication: says only whether the service is up) and /metrics (authenticated)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from labgate.api.deps import LabgateDep, PrincipalDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(lg: LabgateDep) -> dict:
    # Deliberately no detail: an unauthenticated probe learns nothing about forwards or addresses.
    healthy = all(gw.health().status in ("ok", "off") for gw in lg.dataplane.gateways.values())
    return {"status": "ok" if healthy else "degraded"}


@router.get("/metrics")
def metrics(who: PrincipalDep) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
