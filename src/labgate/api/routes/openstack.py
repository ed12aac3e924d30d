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
    return {"configured": True, **lg.openstack.status()}
