"""Request and response bodies. Unknown fields are rejected; domain checks live in labgate.core.validation."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _integral_float(value: Any) -> Any:
    """22.0 is the integer 22 (JSON has one number type; JSON Schema's "integer" includes 22.0). 22.5, true and
    "22" are left as they are, for the strict integer check to refuse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer in a request body: a JSON integer, or a number with a zero fraction.
Int = Annotated[int, BeforeValidator(_integral_float)]


def bounded_int(ge: int, le: int) -> Any:
    """Int from `ge` to `le`. The bounds must come before the validator (pydantic would still check them after
    it, e.g. in `Int | None = Field(ge=1)`, but publish them as "ge"/"le", which JSON Schema does not know, instead
    of "minimum"/"maximum")."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_integral_float)]


Port = bounded_int(1, 65535)
PortCount = bounded_int(1, 1024)

# RFC 3339's date-time (section 5.6): full-date "T" full-time, seconds required, the offset required. "T" and "Z"
# may be lower case (its note); the ranges of the numbers are pydantic's to check.
RFC3339_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                        r"([Zz]|[+-][0-9]{2}:[0-9]{2})")


def _rfc3339_text(value: Any) -> Any:
    """Only RFC 3339 text is a time here (what the schema says: a string of format date-time). Pydantic's lax
    datetime would also take a number, or numeric text ("0.5", "1700000000"), as a Unix time, and
    "2026-01-01 00:00Z" or a bare date as a time: all refused."""
    if isinstance(value, datetime):
        return value  # from Python callers (never from JSON or a query string)
    if not isinstance(value, str) or not RFC3339_RE.fullmatch(value):
        raise PydanticCustomError("rfc3339", "must be an RFC 3339 time with its offset, e.g. 2026-12-31T23:59:59Z")
    return value


# A time in a request (body or query): RFC 3339 text with its offset, nothing else. (strict=False: strict mode takes
# no text for a datetime at all; the text's form is checked before.)
Rfc3339 = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text), Field(strict=False)]


def _not_null(hint: str = "") -> BeforeValidator:
    """A field a PATCH may leave out but never set to null (the schema says so: no "null" among its types)."""

    def check(value: Any) -> Any:
        if value is None:
            raise PydanticCustomError("not_null", "cannot be null" + hint)
        return value

    return BeforeValidator(check)


def _absent_by_default(schema: dict[str, Any]) -> None:
    """No "default" in the schema of a field whose absence means "unchanged" (its Python default, None, is not
    a value it takes)."""
    schema.pop("default", None)


class ForwardCreate(Strict):
    """The target is an address, or with OpenStack (docs/openstack.md) a Neutron port or a server the forward then
    follows: exactly one of target_address, target_port_id and target_server."""

    target_address: str | None = Field(default=None, max_length=64, examples=["10.9.0.5"])
    target_port: Port = Field(examples=[22])
    name: str | None = Field(default=None, max_length=63, examples=["centos1"])
    kind: str | None = Field(default=None, max_length=32, examples=["centos"])
    protocol: Literal["tcp", "udp"] = "tcp"
    # A gateway's name, or (OpenStack) its router's id or name; absent: the only gateway, or the target's router.
    gateway: str | None = Field(default=None, max_length=255)
    target_port_id: str | None = Field(default=None, max_length=64, description="OpenStack: a Neutron port id")
    target_server: str | None = Field(default=None, max_length=255, description="OpenStack: a server's id or name")
    external_port: Port | None = Field(default=None, description="absent or null: the lowest free port is chosen")
    port_count: PortCount = 1
    allowed_sources: list[str] = Field(default_factory=list, max_length=64, examples=[["203.0.113.0/24"]])
    description: str = Field(default="", max_length=255)
    enabled: bool = True


class ForwardPatch(Strict):
    """The fields to change; an absent field keeps its value. null clears name and kind and empties description;
    enabled, allowed_sources, target_address and target_port cannot be null."""

    description: str | None = Field(default=None, max_length=255)
    enabled: Annotated[bool, _not_null()] = Field(default=None, json_schema_extra=_absent_by_default)
    # Opening a forward to anyone must be said explicitly (allowed_sources: []), never by a null.
    allowed_sources: Annotated[list[str], _not_null(" (use [] to allow any source)")] = Field(
        default=None, max_length=64, json_schema_extra=_absent_by_default)
    target_address: Annotated[str, _not_null()] = Field(default=None, max_length=64,
                                                        json_schema_extra=_absent_by_default)
    target_port: Annotated[Port, _not_null()] = Field(default=None, json_schema_extra=_absent_by_default)
    name: str | None = Field(default=None, max_length=63)
    kind: str | None = Field(default=None, max_length=32)


class HealthOut(BaseModel):
    state: Literal["up", "down", "unknown"]
    address: str
    port: str | None
    rtt_ms: float | None
    last_seen_at: datetime | None
    last_checked_at: datetime | None


class UsageOut(BaseModel):
    connections: int
    packets: int
    bytes: int
    last_used_at: datetime | None


class TargetServerOut(BaseModel):
    id: str | None
    name: str | None


class ForwardOut(BaseModel):
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
    # orphaned: its OpenStack port or router went away (kept, ports reserved, no rules; see orphaned_reason);
    # pending / failed: its gateway's agent (another process) has not applied its last change yet / refused it (see
    # status_reason)
    status: Literal["active", "disabled", "error", "orphaned", "pending", "failed"]
    created_at: datetime
    updated_at: datetime
    health: HealthOut
    usage: UsageOut
    target_port_id: str | None = None
    target_server: TargetServerOut | None = None
    orphaned_reason: str | None = None
    status_reason: str | None = None


class Page(BaseModel):
    count: int
    next: str | None
    previous: str | None


class ForwardPage(Page):
    results: list[ForwardOut]


class ForwardBatch(Strict):
    """Creates and deletes applied together: one transaction, one kernel batch, on one gateway; all or nothing."""

    create: list[ForwardCreate] = Field(default=[], max_length=50_000)
    delete: list[bounded_int(1, 2**31 - 1)] = Field(default=[], max_length=50_000)  # type: ignore[valid-type]


class ForwardApply(Strict):
    """The forwards that must exist, each by its machine's name, target port and protocol (on one gateway):
    created when missing, changed when their target or settings differ, left alone when they match."""

    forwards: list[ForwardCreate] = Field(max_length=50_000)


class BatchOut(BaseModel):
    gateway: str | None
    # applied: the kernel has every change; pending: committed, the gateway's agent has not applied it yet
    status: Literal["applied", "pending"]
    created: int
    updated: int
    unchanged: int
    deleted: list[int]
    # The created forwards in request order (apply: every listed forward, created, changed or unchanged).
    forwards: list[ForwardOut]


class MachineOut(BaseModel):
    name: str
    kind: str | None
    owner: str
    addresses: list[str]
    address_health: dict[str, str]
    status: Literal["up", "down", "unknown"]
    forwards: list[ForwardOut]


class MachinePage(Page):
    results: list[MachineOut]


class GatewayDdnsOut(BaseModel):
    """How the gateway's DNS name fares (docs/ddns.md). Times are Unix seconds."""

    name: str
    source: str                      # "config", "auto" or "interface <name>"
    address: str | None              # the address read last
    address_published: str | None    # the address the last successful update sent
    last_update_at: float | None
    last_error: str | None
    last_error_at: float | None
    failures: int                    # consecutive failed updates (retried with backoff)
    next_retry_at: float | None


class DdnsGatewayOut(GatewayDdnsOut):
    gateway: str


class DdnsMachinesOut(BaseModel):
    zone: str
    names: int                       # machine names that should have records
    published: int                   # names whose records the server has accepted
    pending: int                     # names still to add, change or remove
    skipped: list[str]               # forward names that cannot be a DNS label (or are a gateway's name)
    last_update_at: float | None
    last_error: str | None
    last_error_at: float | None
    failures: int
    next_retry_at: float | None


class DdnsStatusOut(BaseModel):
    configured: bool
    server: str | None = None
    zone: str | None = None
    key_name: str | None = None
    key_algorithm: str | None = None
    ttl: int | None = None
    refresh: float | None = None
    gateways: list[DdnsGatewayOut] = []
    machines: DdnsMachinesOut | None = None


class GatewayProblemOut(BaseModel):
    """Why a synced gateway is not_forwarding or degraded."""

    check: str                       # "forwarding", "connection_events", ...
    message: str
    fix: str                         # the command or setting that fixes it


class GatewayAgentOut(BaseModel):
    name: str
    host: str
    alive: bool
    heartbeat_at: datetime | None
    version: str | None = None


class ClusterAgentOut(BaseModel):
    name: str
    host: str
    pid: int
    version: str | None
    gateways: list[str]
    started_at: datetime
    heartbeat_at: datetime
    interval: float
    stopped_at: datetime | None
    # A heartbeat within three of its intervals, and not stopped.
    alive: bool


class ClusterOut(BaseModel):
    database: str  # sqlite | postgresql
    # The process that runs the cluster-wide work (DDNS, the OpenStack monitor): "host:pid" (PostgreSQL), or
    # "this process" (SQLite: one process serves); null while none holds it.
    leader: str | None
    this_process_leads: bool
    agents: list[ClusterAgentOut]


class GatewayOut(BaseModel):
    name: str
    netns: str
    external_address: str | None
    port_ranges: list[str]
    target_networks: list[str]
    masquerade: bool
    ports_total: int
    ports_free: dict[str, int]
    forwards: int
    # ok | not_forwarding | degraded | error | pending | off (see `problems` for not_forwarding and degraded);
    # gateways an agent programs (a cluster): ok | pending | error | agent_down | no_agent
    status: str
    last_error: str | None
    last_sync_at: float | None
    forwards_in_kernel: int | None
    problems: list[GatewayProblemOut] = []
    dns_name: str | None = None
    ddns: GatewayDdnsOut | None = None
    # OpenStack router gateways (docs/openstack.md): the router's id and name, its project; null otherwise.
    router_id: str | None = None
    router_name: str | None = None
    project_id: str | None = None
    # Cluster (docs/operations.md): the agent that programs this gateway (null when this process does), the
    # generation of its committed changes and the generation that agent applied.
    agent: GatewayAgentOut | None = None
    generation: int = 0
    applied_generation: int = 0


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail


class EventOut(BaseModel):
    seq: int
    time: datetime
    kind: str
    fields: dict[str, str | int | float | bool | None]


class EventList(BaseModel):
    count: int
    results: list[EventOut]


Role = Literal["admin", "user", "readonly", "metrics"]


class TokenCreate(Strict):
    owner: str = Field(max_length=64, examples=["alice"])
    role: Role = "user"
    expires_at: Rfc3339 | None = Field(
        default=None, description="RFC 3339 time with offset, e.g. 2026-12-31T23:59:59Z; absent = never expires")
    allowed_networks: list[str] | None = Field(default=None, max_length=64, examples=[["192.0.2.0/24"]],
                                               description="CIDRs the token may be used from; absent = anywhere")
    project: str | None = Field(default=None, max_length=64,
                                description="OpenStack: scope a user or readonly token to this project id")


class TokenOut(BaseModel):
    id: int
    owner: str
    role: Role
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    allowed_networks: list[str] | None
    last_used_at: datetime | None
    revoked: bool
    revoked_at: datetime | None
    status: Literal["active", "expired", "revoked"]
    project_id: str | None = None


class TokenCreated(TokenOut):
    token: str = Field(description="the secret: shown in this answer only, never again (only its hash is kept)")


class TokenPage(Page):
    results: list[TokenOut]


class AuditOut(BaseModel):
    id: int
    time: datetime
    actor: str                       # the owner name of the token that made the change ("local:<user>": the CLI)
    token_id: int | None
    client: str | None               # the peer address the request came from
    action: str                      # forward.create|update|delete, token.create|revoke, limits.update
    object_type: str
    object_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditPage(Page):
    results: list[AuditOut]


class OpenStackCycleOut(BaseModel):
    started_at: str | None
    seconds: float | None
    api_calls: int
    routers: int
    ports: int
    changes: dict[str, int]
    error: str | None


class OpenStackStatusOut(BaseModel):
    configured: bool
    cloud: str | None = None
    monitor_interval: float | None = None
    on_target_deleted: str | None = None
    projects: list[str] = []
    consecutive_failures: int = 0
    last_cycle: OpenStackCycleOut | None = None
    last_successful_cycle: OpenStackCycleOut | None = None
