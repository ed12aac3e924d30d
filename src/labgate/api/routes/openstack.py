"""/api/v1/openstack: the OpenStack monitor's last cycles (docs/openstack.md)."""

from __future__ import annotations

from fastapi import APIRouter

from labgate.api.deps import AUTH_ERRORS, LabgateDep, ReaderDep
from labgate.api.schemas import OpenStackStatusOut

router = APIRouter(prefix="/api/v1/openstack", tags=["openstack"])


@router.get("", response_model=OpenStackStatusOut, responses=AUTH_ERRORS)
def openstack_status(lg: LabgateDep, who: ReaderDep) -> dict:
    """Whether OpenStack is on, and the monitor's last cycle and last successful cycle: when, how long, API calls
    made, changes applied, error. A cloud that fails is retried with backoff (`consecutive_failures`)."""
    if lg.openstack is None:
        return {"configured": False}
    status = lg.openstack.status()
    if who.project is not None:
        # A project's token learns how the monitor fares, not the other projects labgate serves or the cloud's
        # own words (endpoints, other projects' port ids).
        status["projects"] = [who.project] if status["projects"] else []
        for key in ("last_cycle", "last_successful_cycle"):
            if status.get(key) and status[key].get("error"):
                status[key]["error"] = "the cloud could not be read (an admin token shows why)"
    return {"configured": True, **status}
