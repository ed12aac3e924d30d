"""/api/v1/limits/{owner}: an owner's quotas on forwards and ports (their own for anyone; set by admins)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from labgate.api.deps import AUTH_ERRORS, AdminDep, LabgateDep, PrincipalDep
from labgate.api.schemas import ErrorOut, bounded_int
from labgate.core.limits import MAX_LIMIT, OwnerQuota, get_quota, set_quota

router = APIRouter(prefix="/api/v1/limits", tags=["limits"])
Owner = Annotated[str, Path(max_length=64, description="the owner (a token's owner name)")]
ERRORS = {**AUTH_ERRORS, 404: {"model": ErrorOut}, 422: {"model": ErrorOut}}
Limit = bounded_int(0, MAX_LIMIT)


class LimitsOut(BaseModel):
    owner: str
    forwards_limit: int = Field(description="forwards the owner may hold; 0 = no limit")
    ports_limit: int = Field(description="external ports the owner may hold (a block of N counts N); 0 = no limit")
    forwards: int = Field(description="forwards held now")
    ports: int = Field(description="external ports held now")
    overridden: bool = Field(description="an admin set this owner's limits (else the [limits] defaults apply)")


class LimitsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    forwards: Limit | None = Field(default=None, description="null: the default")
    ports: Limit | None = Field(default=None, description="null: the default")


@router.get("/{owner}", response_model=LimitsOut, responses=ERRORS)
def get_limits(owner: Owner, lg: LabgateDep, who: PrincipalDep) -> OwnerQuota:
    """An owner's limits and what they hold now: your own, or anyone's for admins."""
    return get_quota(lg.db, lg.settings.limits, who, owner)


@router.put("/{owner}", response_model=LimitsOut, responses=ERRORS)
def put_limits(owner: Owner, body: LimitsIn, lg: LabgateDep, who: AdminDep) -> OwnerQuota:
    """Admins: set an owner's limits (0 = no limit; null = back to the [limits] default). Audited
    (`limits.update`)."""
    return set_quota(lg.db, lg.settings.limits, who, owner, forwards=body.forwards, ports=body.ports,
                     publisher=lg.labels)
