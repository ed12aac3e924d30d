"""The [compat] section: the vLab (vlab_ipam_api) compatibility API and the key that verifies its tokens."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from labgate.keys import JWT_ALGORITHMS, load_jwt_key


class CompatConfig(BaseModel):
    """The [compat] section: the vLab (vlab_ipam_api) compatibility API. Off unless vlab_enabled = true, and then
    it needs an explicit algorithm, key file and issuer: labgate has no built-in key."""

    model_config = ConfigDict(extra="forbid")

    vlab_enabled: bool = False
    jwt_algorithm: str | None = None
    jwt_key_file: str | None = None
    jwt_issuer: str | None = None
    # The claim naming the owner of forwards (vLab tokens carry "username").
    owner_claim: str = "username"
    # Clock skew allowed on exp/nbf/iat, in seconds (vLab allowed 10).
    jwt_leeway: int = Field(default=10, ge=0, le=300)
    # Which gateway the compat API acts on; may be left out when there is only one.
    gateway: str | None = None

    @field_validator("jwt_algorithm")
    @classmethod
    def _algorithm(cls, v: str | None) -> str | None:
        if v is not None and v not in JWT_ALGORITHMS:
            raise ValueError(f"compat.jwt_algorithm must be one of {', '.join(JWT_ALGORITHMS)}")
        return v

    @field_validator("owner_claim")
    @classmethod
    def _claim(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}", v):
            raise ValueError("compat.owner_claim must be a plain claim name such as 'username'")
        return v

    @model_validator(mode="after")
    def _complete(self) -> "CompatConfig":
        if not self.vlab_enabled:
            return self
        missing = [k for k in ("jwt_algorithm", "jwt_key_file", "jwt_issuer") if not getattr(self, k)]
        if missing:
            raise ValueError(f"compat.vlab_enabled needs {', '.join('compat.' + m for m in missing)} "
                             "(there is no built-in key)")
        assert self.jwt_algorithm and self.jwt_key_file
        load_jwt_key(self.jwt_algorithm, self.jwt_key_file)  # fail at start, not on the first request
        return self
