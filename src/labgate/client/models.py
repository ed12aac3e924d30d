"""What the API returns, as plain typed objects."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any


def _from(cls, data: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Forward:
    id: int
    gateway: str
    protocol: str
    external_address: str | None
    external_port: int
    target_address: str
    target_port: int
    port_count: int = 1
    name: str | None = None
    kind: str | None = None
    owner: str = ""
    description: str = ""
    enabled: bool = True
    allowed_sources: list[str] = field(default_factory=list)
    status: str = "active"
    created_at: datetime | str | None = None
    updated_at: datetime | str | None = None
    health: dict[str, Any] = field(default_factory=dict)  # state up/down/unknown, address, port, rtt_ms, ...
    usage: dict[str, Any] = field(default_factory=dict)   # connections, packets, bytes, last_used_at
    # OpenStack (docs/openstack.md): the Neutron port it follows, its server {"id", "name"}, why it is orphaned
    target_port_id: str | None = None
    target_server: dict[str, Any] | None = None
    orphaned_reason: str | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "Forward":
        return _from(cls, data)

    @property
    def external(self) -> str:
        """'address:port' (or 'address:first-last' for a block) that clients connect to."""
        ports = str(self.external_port) if self.port_count == 1 else \
            f"{self.external_port}-{self.external_port + self.port_count - 1}"
        return f"{self.external_address}:{ports}"


@dataclass
class Machine:
    name: str
    kind: str | None
    owner: str
    addresses: list[str]
    forwards: list[Forward]
    status: str = "unknown"  # up, down (a bad record), unknown

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "Machine":
        m = _from(cls, data)
        m.forwards = [Forward.from_api(f) for f in data.get("forwards", [])]
        return m


@dataclass
class Gateway:
    name: str
    netns: str
    external_address: str | None
    port_ranges: list[str]
    target_networks: list[str]
    masquerade: bool
    ports_total: int
    ports_free: dict[str, int]
    forwards: int
    status: str
    last_error: str | None = None
    last_sync_at: float | None = None
    forwards_in_kernel: int | None = None
    # Why a synced gateway is not_forwarding or degraded: [{"check", "message", "fix"}]
    problems: list[dict[str, str]] = field(default_factory=list)
    dns_name: str | None = None
    ddns: dict[str, Any] | None = None  # docs/ddns.md: address_published, last_update_at, last_error, ...
    router_id: str | None = None  # OpenStack router gateways: the router and its project
    router_name: str | None = None
    project_id: str | None = None
    agent: dict[str, Any] | None = None  # a cluster: the agent that programs it (name, host, alive, heartbeat_at)
    generation: int = 0
    applied_generation: int = 0

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "Gateway":
        return _from(cls, data)
