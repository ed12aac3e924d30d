"""The tables. The database is the truth; the kernel rules are derived from these rows."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite hands back naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class Token(Base):
    """An API credential. Only the SHA-256 of the secret is kept; the secret is shown once at creation."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="user")  # admin, user, readonly, metrics
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # CIDRs the token may be used from; NULL = anywhere.
    allowed_networks: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    # Updated at most once a minute per token, off the request's path (core/tokens.py).
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # An OpenStack project the token is scoped to: it sees and changes only forwards on that project's routers.
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Forward(Base):
    """One forward: external (gateway, protocol, port[, block]) -> target address and port."""

    __tablename__ = "forwards"
    # Ids are connection marks in the kernel: never reuse one (SQLite AUTOINCREMENT; sequences elsewhere).
    __table_args__ = (
        Index("ix_forwards_owner_name", "owner", "name"),
        Index("ix_forwards_target", "target_address", "target_port"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gateway: Mapped[str] = mapped_column(String(32), index=True)
    protocol: Mapped[str] = mapped_column(String(3))
    external_port: Mapped[int] = mapped_column(Integer)
    port_count: Mapped[int] = mapped_column(Integer, default=1)
    target_address: Mapped[str] = mapped_column(String(45))
    target_port: Mapped[int] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(String(63), nullable=True)
    kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    owner: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(255), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    allowed_sources: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # OpenStack: the Neutron port the forward follows (its fixed IP is target_address), and the server holding it.
    target_port_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    target_server_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    target_server_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Set when its target port or router went away and on_target_deleted = "orphan": kept, ports reserved, no rules.
    orphaned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    orphaned_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Its gateway's generation when it last changed: applied once the gateway's agent applied that generation.
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class GatewayState(Base):
    """One gateway's change counter and what its agent applied (docs/operations.md, Cluster). Every committed change
    to a gateway's forwards bumps `generation`; the process that programs the gateway's kernel (an agent, or serve
    in one process) records the generation it applied, or its error. A forward whose generation is above
    `applied_generation` is pending."""

    __tablename__ = "gateway_states"

    gateway: Mapped[str] = mapped_column(String(32), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    applied_generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    agent: Mapped[str | None] = mapped_column(String(128), nullable=True)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # What the agent learned of the gateway (an "auto" external address), for API replicas that cannot look.
    external_address: Mapped[str | None] = mapped_column(String(45), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    error_generation: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Agent(Base):
    """A `labgate agent` (or `labgate serve` with its dataplane): its gateways and its heartbeat."""

    __tablename__ = "agents"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[str] = mapped_column(String(32), default="")
    gateways: Mapped[list[str]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    interval: Mapped[float] = mapped_column(Float, default=5.0)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class CloudRouter(Base):
    """An OpenStack router labgate serves as a gateway, as the monitor last saw it; kept after the router is gone
    (gone_at) while forwards still hold its ports. Read at start, so a restart restores its rules without the
    cloud."""

    __tablename__ = "cloud_routers"

    gateway: Mapped[str] = mapped_column(String(32), primary_key=True)
    router_id: Mapped[str] = mapped_column(String(36), unique=True)
    router_name: Mapped[str] = mapped_column(String(255), default="")
    project_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    external_address: Mapped[str | None] = mapped_column(String(45), nullable=True)
    target_networks: Mapped[list[str]] = mapped_column(JSON, default=list)
    port_range: Mapped[list[str]] = mapped_column(JSON, default=list)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    gone_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PortAllocation(Base):
    """One row per external port a forward holds: the primary key makes two holders impossible."""

    __tablename__ = "port_allocations"
    __table_args__ = (UniqueConstraint("gateway", "protocol", "port", name="uq_port_allocation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gateway: Mapped[str] = mapped_column(String(32))
    protocol: Mapped[str] = mapped_column(String(3))
    port: Mapped[int] = mapped_column(Integer)
    forward_id: Mapped[int] = mapped_column(ForeignKey("forwards.id", ondelete="CASCADE"), index=True)


class AddressHealth(Base):
    """Reachability of one target address, as probed from inside its gateway's namespace."""

    __tablename__ = "address_health"

    gateway: Mapped[str] = mapped_column(String(32), primary_key=True)
    address: Mapped[str] = mapped_column(String(45), primary_key=True)
    state: Mapped[str] = mapped_column(String(8), default="unknown")  # up, down, unknown
    rtt_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # consecutive failed cycles
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ForwardState(Base):
    """What the background workers learned about one forward: its target port's health and its usage."""

    __tablename__ = "forward_state"

    forward_id: Mapped[int] = mapped_column(ForeignKey("forwards.id", ondelete="CASCADE"), primary_key=True)
    port_state: Mapped[str] = mapped_column(String(12), default="unknown")  # open, refused, timeout, unreachable
    port_failures: Mapped[int] = mapped_column(Integer, default=0)
    port_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    connections: Mapped[int] = mapped_column(BigInteger, default=0)
    packets: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The kernel counters as last read: totals above grow by the difference (a reset counter starts over).
    raw_connections: Mapped[int] = mapped_column(BigInteger, default=0)
    raw_packets: Mapped[int] = mapped_column(BigInteger, default=0)
    raw_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class Audit(Base):
    """One change (a forward created, changed or deleted; a token created or revoked; a limit set): who, with which
    token, from which address, when, and the object before and after (JSON text). Written in the transaction of the
    change."""

    __tablename__ = "audit"
    __table_args__ = (
        Index("ix_audit_time", "time"),
        Index("ix_audit_actor", "actor"),
        Index("ix_audit_action", "action"),
        Index("ix_audit_object", "object_type", "object_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(64))
    token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(32))        # "forward.create", "token.revoke", ...
    object_type: Mapped[str] = mapped_column(String(16))   # "forward", "token", "limits": the part before the dot
    object_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    before: Mapped[str | None] = mapped_column(Text, nullable=True)
    after: Mapped[str | None] = mapped_column(Text, nullable=True)
