"""What callers are told about a forward, a machine or a gateway: typed views, built from rows and the
dataplane's state. The API turns them into JSON through api/schemas.py; the vLab compat layer reads them too."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from labgate.db.models import AddressHealth, Forward, ForwardState

PORT_FAILED = ("refused", "timeout", "unreachable")


@dataclass(frozen=True)
class HealthView:
    """up: the address answers and (TCP) the port accepts; down: either fails; unknown: not probed yet."""

    state: str
    address: str
    port: str | None
    rtt_ms: float | None
    last_seen_at: datetime | None
    last_checked_at: datetime | None

    @classmethod
    def of(cls, protocol: str, st: ForwardState | None, addr: AddressHealth | None) -> "HealthView":
        address_state = addr.state if addr else "unknown"
        port_state = st.port_state if st else "unknown"
        if address_state == "down" or port_state in PORT_FAILED:
            state = "down"
        elif address_state == "up" and (protocol == "udp" or port_state == "open"):
            state = "up"
        else:
            state = "unknown"
        return cls(state, address_state, port_state if protocol == "tcp" else None, addr.rtt_ms if addr else None,
                   addr.last_seen_at if addr else None, addr.last_checked_at if addr else None)


@dataclass(frozen=True)
class UsageView:
    connections: int = 0
    packets: int = 0
    bytes: int = 0
    last_used_at: datetime | None = None

    @classmethod
    def of(cls, st: ForwardState | None) -> "UsageView":
        return cls() if st is None else cls(st.connections, st.packets, st.bytes, st.last_used_at)


@dataclass(frozen=True)
class ForwardView:
    id: int
    gateway: str
    protocol: str
    external_address: str | None
    external_port: int
    port_count: int
    target_address: str
    target_port: int
    name: str | None
    kind: str | None
    owner: str
    description: str
    enabled: bool
    allowed_sources: list[str]
    # active, disabled, error (the gateway cannot apply or route it), orphaned (its OpenStack port or router went
    # away: kept, its ports reserved, no rules); on a gateway another process (its agent) programs: pending (that
    # agent has not applied the forward's last change, or is not running), failed (its kernel refused it)
    status: str
    created_at: datetime
    updated_at: datetime
    health: HealthView
    usage: UsageView
    target_port_id: str | None = None
    target_server: dict[str, str | None] | None = None  # {"id", "name"}
    orphaned_reason: str | None = None
    # Why the status is pending or failed (a gateway whose agent is another process), else None.
    status_reason: str | None = None

    @classmethod
    def of(cls, fwd: Forward, *, external_address: str | None, gateway_ok: bool, st: ForwardState | None,
           addr: AddressHealth | None, agent: tuple[str, str | None] | None = None) -> "ForwardView":
        """`agent`: for a gateway another process programs, ("pending" | "failed", why) until this forward's change
        is applied there."""
        reason = None
        if fwd.orphaned_at is not None:
            status = "orphaned"
        elif agent is not None:
            status, reason = agent
        else:
            status = "disabled" if not fwd.enabled else "active" if gateway_ok else "error"
        server = ({"id": fwd.target_server_id, "name": fwd.target_server_name}
                  if fwd.target_server_id or fwd.target_server_name else None)
        return cls(fwd.id, fwd.gateway, fwd.protocol, external_address, fwd.external_port, fwd.port_count,
                   fwd.target_address, fwd.target_port, fwd.name, fwd.kind, fwd.owner, fwd.description, fwd.enabled,
                   list(fwd.allowed_sources or []), status, fwd.created_at, fwd.updated_at,
                   HealthView.of(fwd.protocol, st, addr), UsageView.of(st), fwd.target_port_id, server,
                   fwd.orphaned_reason, reason)


@dataclass
class MachineView:
    """A machine name (per owner): its kind, addresses and their reachability, and its forwards."""

    name: str
    kind: str | None
    owner: str
    addresses: list[str] = field(default_factory=list)
    forwards: list[ForwardView] = field(default_factory=list)
    address_health: dict[str, str] = field(default_factory=dict)
    status: str = "unknown"  # up (every address answers), down (one does not: a bad record), unknown


@dataclass(frozen=True)
class ProblemView:
    check: str
    message: str
    fix: str


@dataclass
class GatewayView:
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
    last_error: str | None
    last_sync_at: float | None
    forwards_in_kernel: int | None
    problems: list[ProblemView]
    dns_name: str | None = None
    ddns: dict[str, Any] | None = None
    # OpenStack router gateways: the router's id and name, its project; gone = the router was deleted (its
    # forwards orphaned, their ports still reserved).
    router_id: str | None = None
    router_name: str | None = None
    project_id: str | None = None
    # Cluster (docs/operations.md): the agent that programs this gateway's kernel when another process does
    # ({name, host, alive, heartbeat_at, version}), the generation of its committed changes and the one applied.
    agent: dict[str, Any] | None = None
    generation: int = 0
    applied_generation: int = 0
