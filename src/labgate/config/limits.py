"""The [limits] section: how much of the gateways one owner may hold, so that one user cannot take every port."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LimitsConfig(BaseModel):
    """Per-owner defaults; an admin may raise or lower them per owner (PUT /api/v1/limits/{owner}). Admins
    themselves are not limited. 0 = no limit."""

    model_config = ConfigDict(extra="forbid")

    # Forwards one owner may hold (enabled or not: a disabled forward still holds its ports).
    forwards_per_owner: int = Field(default=500, ge=0, le=1_000_000)
    # External ports one owner may hold across all gateways and protocols (a block of N counts N).
    ports_per_owner: int = Field(default=1000, ge=0, le=10_000_000)
