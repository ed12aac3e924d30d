"""The [openstack] section: project routers as gateways (docs/openstack.md).

Every router with an external gateway (of the selected projects) becomes a gateway in its `qrouter-<id>`
namespace; a monitor follows the cloud every `monitor_interval` seconds with one batched look.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from labgate.config.gateway import port_ranges

# A clouds.yaml entry name: what openstacksdk looks up; nothing a path or a shell could misread.
CLOUD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class OpenStackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The clouds.yaml entry (OS_CLIENT_CONFIG_FILE, or openstacksdk's usual search path).
    cloud: str
    # A clouds.yaml to read (default: OS_CLIENT_CONFIG_FILE, or openstacksdk's search path: ~/.config/openstack,
    # /etc/openstack).
    clouds_file: str | None = None
    monitor_interval: float = Field(30.0, gt=0, le=3600)
    # External ports used on every router (PRaaS's default range).
    router_port_range: list[str] = Field(default_factory=lambda: ["4000-4100"])
    # A forward whose target port (or VM) is deleted: "delete" it, or keep it as "orphaned" with its rules removed.
    on_target_deleted: Literal["delete", "orphan"] = "delete"
    # Only routers of these project ids; empty = every router the cloud account sees.
    projects: list[str] = Field(default_factory=list)
    # Seconds an API call may take before the cycle counts as failed.
    api_timeout: float = Field(30.0, gt=0, le=600)

    @field_validator("cloud")
    @classmethod
    def _cloud(cls, v: str) -> str:
        if not CLOUD_NAME_RE.fullmatch(v):
            raise ValueError("openstack.cloud must be a clouds.yaml entry name (letters, digits, '_', '.', '-')")
        return v

    @field_validator("router_port_range", mode="before")
    @classmethod
    def _ranges(cls, v: Any) -> list[str]:
        return port_ranges(v, "openstack.router_port_range")

    @field_validator("projects")
    @classmethod
    def _projects(cls, v: list[str]) -> list[str]:
        return [project_id(p, "openstack.projects") for p in v]


def project_id(text: str, what: str = "project") -> str:
    """A Keystone project id: 32 hex digits (Keystone's form) or a UUID; returned in Keystone's form (no dashes).
    Raises ValueError otherwise (also for text that is only safe-looking)."""
    t = text.strip().lower().replace("-", "")
    if not re.fullmatch(r"[0-9a-f]{32}", t):
        # Clouds without Keystone (noauth) use free-form project ids; accept a plain identifier too.
        if re.fullmatch(r"[a-z0-9_]{1,64}", text):
            return text
        raise ValueError(f"{what}: {text!r} is not a project id (32 hex digits)")
    return t


def router_gateway_name(router_id: str) -> str:
    """The gateway name of a router: 'r' and the first 30 hex digits of its id (120 bits: unique in practice;
    a clash is refused by the monitor). Fits GATEWAY_NAME_RE and the 32-character gateway columns."""
    return "r" + uuid.UUID(router_id).hex[:30]


def router_netns(router_id: str) -> str:
    """The namespace the Neutron L3 agent runs a router in."""
    return f"qrouter-{uuid.UUID(router_id)}"
