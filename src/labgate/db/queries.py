"""The read queries other layers need, in one place: the committed rules a gateway must have, a forward's labels
for events, per-forward state, counts per gateway, the per-forward series /metrics shows, and what the workers
(health, usage, ddns) read. Writes stay with their owners (core's commands, the workers' recorders) through ORM
sessions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Iterator, NamedTuple

from sqlalchemy import Row, String, and_, delete, func, select, type_coerce
from sqlalchemy.orm import Session

from labgate.db.models import AddressHealth, CloudRouter, Forward, ForwardState, PortAllocation
from labgate.db.session import Database

# The columns the kernel rule of a forward is made from; allowed_sources as raw JSON text (decoded only if set).
RULE_COLUMNS = (Forward.id, Forward.protocol, Forward.external_port, Forward.target_address, Forward.target_port,
                Forward.port_count, type_coerce(Forward.allowed_sources, String).label("allowed_sources"))


# A forward has kernel rules when it is enabled and not orphaned (its OpenStack port or router went away).
LIVE = and_(Forward.enabled.is_(True), Forward.orphaned_at.is_(None))


def enabled_rule_rows(s: Session, gateway: str) -> Iterator:
    """Rows (RULE_COLUMNS) of the gateway's live forwards, by id, through `s` (its pending changes included)."""
    return iter(s.execute(select(*RULE_COLUMNS).where(Forward.gateway == gateway, LIVE).order_by(Forward.id)))


def enabled_rule_tuples(s: Session, gateway: str) -> list[tuple]:
    """The same rows as plain tuples in the dataplane's RuleRow order (id, protocol, external_port, port_count,
    target_address, target_port, allowed_sources as a tuple of CIDR texts): what a full render reads, with no
    object per row. The renderer checks every field again before anything reaches nft."""
    # Through the session's connection (Core): the same transaction and pending changes, without the ORM's
    # per-row processing (~35 ms of 110 at 50,000 rows).
    s.flush()
    result = s.connection().execute(select(*RULE_COLUMNS).where(Forward.gateway == gateway, LIVE)
                                    .order_by(Forward.id))
    return [(i, p, ep, pc, ta, tp, _sources(src) if src and src != "[]" else ())
            for i, p, ep, ta, tp, pc, src in result]


def _sources(value: object) -> tuple:
    """allowed_sources as read: JSON text (SQLite), or already decoded (PostgreSQL's driver decodes json)."""
    if isinstance(value, str):
        value = json.loads(value)
    return tuple(str(n) for n in value) if isinstance(value, (list, tuple)) else (str(value),)


@dataclass(frozen=True)
class ForwardLabels:
    """What an event about a forward names: its gateway, owner and machine name."""

    gateway: str
    owner: str
    name: str | None


def forward_labels(db: Database, forward_id: int) -> ForwardLabels | None:
    with db.reader() as s:
        row = s.execute(select(Forward.gateway, Forward.owner, Forward.name).where(Forward.id == forward_id)).first()
    return None if row is None else ForwardLabels(row.gateway, row.owner, row.name)


def forward_states(s: Session, forwards: list[Forward]) -> tuple[dict[int, ForwardState],
                                                                 dict[tuple[str, str], AddressHealth]]:
    """Usage and port health per forward id, address health per (gateway, address): one query each."""
    if not forwards:
        return {}, {}
    ids = [f.id for f in forwards]
    states = {st.forward_id: st for st in s.scalars(select(ForwardState).where(ForwardState.forward_id.in_(ids)))}
    addresses = {f.target_address for f in forwards}
    health = {(h.gateway, h.address): h for h in s.scalars(
        select(AddressHealth).where(AddressHealth.address.in_(addresses)))}
    return states, health


def ports_taken(db: Database) -> dict[tuple[str, str], int]:
    """{(gateway, protocol): allocated ports}."""
    with db.reader() as s:
        return {(g, p): n for g, p, n in s.execute(
            select(PortAllocation.gateway, PortAllocation.protocol, func.count()).group_by(
                PortAllocation.gateway, PortAllocation.protocol))}


def forwards_per_gateway(db: Database) -> dict[str, int]:
    with db.reader() as s:
        return dict(s.execute(select(Forward.gateway, func.count()).group_by(Forward.gateway)).all())


@dataclass(frozen=True)
class UsageSeries:
    forward_id: int
    gateway: str
    owner: str
    name: str | None
    connections: int
    packets: int
    bytes: int
    last_used_at: datetime | None


def used_forwards(db: Database) -> list[UsageSeries]:
    """Every forward that has carried at least one connection, with its totals (for /metrics)."""
    with db.reader() as s:
        rows = s.execute(select(Forward.id, Forward.gateway, Forward.owner, Forward.name, ForwardState.connections,
                                ForwardState.packets, ForwardState.bytes, ForwardState.last_used_at)
                         .join(ForwardState, ForwardState.forward_id == Forward.id)
                         .where(ForwardState.connections > 0))
        return [UsageSeries(*r) for r in rows]


def targets_down(db: Database, gateways: Iterable[str]) -> dict[str, int]:
    """{gateway: number of its target addresses currently down} (0 for every gateway named)."""
    counts = {g: 0 for g in gateways}
    with db.reader() as s:
        for gateway, in s.execute(select(AddressHealth.gateway).where(AddressHealth.state == "down")):
            counts[gateway] = counts.get(gateway, 0) + 1
    return counts


def port_holder(s: Session, gateway: str, protocol: str, first: int, last: int) -> int | None:
    """The forward holding one of ports first..last, if any."""
    return s.scalar(select(PortAllocation.forward_id).where(
        PortAllocation.gateway == gateway, PortAllocation.protocol == protocol,
        PortAllocation.port.between(first, last)))


# --- the workers' reads (health, usage, ddns) ---------------------------------------------------------------------
class ProbeTarget(NamedTuple):
    id: int
    protocol: str
    enabled: bool
    target_address: str
    target_port: int


def probe_targets(s: Session, gateway: str) -> list[ProbeTarget]:
    """Every forward of the gateway (id, protocol, enabled, target_address, target_port), through `s`: what a
    health cycle probes. Small tuples (no owner or name: see forward_owners), through Core: at 50,000 forwards
    the rows with owners and names were ~15 MiB of one cycle's peak."""
    result = s.connection().execute(select(Forward.id, Forward.protocol, LIVE.label("enabled"),
                                           Forward.target_address, Forward.target_port)
                                    .where(Forward.gateway == gateway))
    one = {}.setdefault  # one str object per distinct protocol and address, not one per row
    return [ProbeTarget(i, one(p, p), bool(e), one(a, a), port) for i, p, e, a, port in result]


def forward_owners(s: Session, gateway: str, addresses: list[str]) -> Iterator[tuple[str, str, str | None]]:
    """(target_address, owner, name) of the gateway's forwards to these addresses (a health event names them),
    streamed: the first cycle finds every address changed, and 50,000 rows at once were ~8 MiB of its peak."""
    for i in range(0, len(addresses), 500):
        yield from s.connection().execute(select(Forward.target_address, Forward.owner, Forward.name)
                                          .where(Forward.gateway == gateway,
                                                 Forward.target_address.in_(addresses[i:i + 500])))


def delete_gateway_health(s: Session, gateway: str) -> None:
    """Delete every address_health row of the gateway in `s` (the caller commits)."""
    s.execute(delete(AddressHealth).where(AddressHealth.gateway == gateway))


def address_health_rows(s: Session, gateway: str) -> dict[str, AddressHealth]:
    """{address: AddressHealth} of the gateway, loaded into `s`."""
    return {h.address: h for h in s.scalars(select(AddressHealth).where(AddressHealth.gateway == gateway))}


def forward_states_by_id(s: Session, ids: Iterable[int]) -> dict[int, ForwardState]:
    """{forward_id: ForwardState} of the forwards `ids` that have a state row, loaded into `s`."""
    return {st.forward_id: st for st in s.scalars(select(ForwardState).where(ForwardState.forward_id.in_(ids)))}


def ids_with_raw_usage(s: Session, gateway: str) -> list[int]:
    """Ids of the gateway's forwards whose last kernel counter reading (raw_*) was not all zero."""
    return list(s.scalars(select(ForwardState.forward_id)
                          .join(Forward, Forward.id == ForwardState.forward_id)
                          .where(Forward.gateway == gateway,
                                 (ForwardState.raw_connections != 0) | (ForwardState.raw_packets != 0)
                                 | (ForwardState.raw_bytes != 0))))


def existing_forward_ids(s: Session, gateway: str, ids: Iterable[int]) -> set[int]:
    """Which of `ids` still exist as forwards of the gateway, through `s`."""
    return set(s.scalars(select(Forward.id).where(Forward.id.in_(ids), Forward.gateway == gateway)))


def forwards_fingerprint(db: Database) -> tuple:
    """(count, highest id, latest updated_at) of all forwards: changes whenever one is created, changed or deleted."""
    with db.reader() as s:
        row = s.execute(select(func.count(), func.max(Forward.id), func.max(Forward.updated_at))
                        .select_from(Forward)).one()
    return tuple(row)


def named_enabled_forwards(db: Database) -> list[Row]:
    """Enabled forwards that have a name, by id (name, gateway, protocol, ports, target): for machine records."""
    with db.reader() as s:
        return s.execute(select(Forward.name, Forward.gateway, Forward.protocol, Forward.external_port,
                                Forward.port_count, Forward.target_address, Forward.target_port)
                         .where(Forward.name.is_not(None), LIVE)
                         .order_by(Forward.id)).all()


# --- OpenStack ------------------------------------------------------------------------------------------------------
def cloud_routers(db: Database) -> list[CloudRouter]:
    """Every router labgate serves or served (gone_at set), detached from the session."""
    with db.reader() as s:
        return list(s.scalars(select(CloudRouter).order_by(CloudRouter.gateway)))


def cloud_forwards(db: Database, gateways: list[str]) -> list[Row]:
    """The forwards on these router gateways the monitor follows (not orphaned): id, gateway, target_address,
    target_port_id, target_server_id."""
    if not gateways:
        return []
    with db.reader() as s:
        return s.execute(select(Forward.id, Forward.gateway, Forward.target_address, Forward.target_port_id,
                                Forward.target_server_id)
                         .where(Forward.gateway.in_(gateways), Forward.orphaned_at.is_(None))
                         .order_by(Forward.id)).all()


def project_gateways(db: Database, project_id: str) -> list[str]:
    """The router gateways (current or gone) of one project."""
    with db.reader() as s:
        return list(s.scalars(select(CloudRouter.gateway).where(CloudRouter.project_id == project_id)))


def followed_ports(db: Database, before: datetime) -> set[str]:
    """The Neutron ports that live forwards (not orphaned) last changed before `before` follow."""
    with db.reader() as s:
        return set(s.scalars(select(Forward.target_port_id).where(Forward.target_port_id.is_not(None),
                                                                  Forward.orphaned_at.is_(None),
                                                                  Forward.updated_at < before).distinct()))
