"""Forwards: create, read, change, delete - each one database transaction whose kernel change is applied before
the commit, so a 2xx answer means the kernel already forwards, and any error leaves nothing half-applied.
Also the machines (IPAM) and gateways views, which are derived from forwards."""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, and_, func, select, type_coerce
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labgate.config import GatewayConfig, Settings
from labgate.core import validation as v
from labgate.core.errors import (
    DataplaneUnavailable,
    InvalidInput,
    NotFound,
    PortTaken,
    RangeExhausted,
)
from labgate.core.ports import PortPool
from labgate.core.tokens import Principal
from labgate.dataplane.reconcile import Dataplane, DataplaneError, GatewayDataplane
from labgate.dataplane.render import ForwardRule
from labgate.db.models import AddressHealth, Forward, ForwardState, PortAllocation
from labgate.db.session import Database
from labgate.workers.events import Event, EventBus

log = logging.getLogger("labgate.forwards")

ALLOCATION_ATTEMPTS = 5
PATCHABLE = {"description", "enabled", "allowed_sources", "target_address", "target_port", "name", "kind"}


@dataclass
class ForwardSpec:
    """A create request, as the API received it (types already checked, domain checks not yet)."""

    target_address: str
    target_port: int
    name: str | None = None
    kind: str | None = None
    protocol: str = "tcp"
    gateway: str | None = None
    external_port: int | None = None
    port_count: int = 1
    allowed_sources: list[str] = field(default_factory=list)
    description: str = ""
    enabled: bool = True


@dataclass
class ForwardFilter:
    name: str | None = None
    kind: str | None = None
    target_address: str | None = None
    target_port: int | None = None
    external_port: int | None = None
    protocol: str | None = None
    gateway: str | None = None
    owner: str | None = None


@functools.lru_cache(maxsize=65536)
def _ipv4(text: str) -> ipaddress.IPv4Address:
    # Rows hold addresses already validated and normalized on write; building from the packed form is ~4x faster
    # than parsing, which matters when 50,000 rows are loaded for a full re-render.
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return ipaddress.IPv4Address(text)  # raises ValueError with the usual message


def _sources(value: Any) -> tuple[ipaddress.IPv4Network, ...]:
    if isinstance(value, str):  # raw JSON text (see enabled_rules): parse only when not empty
        value = json.loads(value) if value not in ("[]", "") else ()
    return tuple(ipaddress.IPv4Network(n) for n in (value or ()))


def rule_of(fwd: Any, external: ipaddress.IPv4Address) -> ForwardRule:
    """The kernel's view of a forward row (any object with the Forward columns as attributes)."""
    return ForwardRule(
        id=fwd.id,
        protocol=fwd.protocol,
        external_address=external,
        external_port=fwd.external_port,
        target_address=_ipv4(fwd.target_address),
        target_port=fwd.target_port,
        port_count=fwd.port_count,
        allowed_sources=_sources(fwd.allowed_sources),
    )


class ForwardService:
    def __init__(self, settings: Settings, db: Database, dataplane: Dataplane, bus: EventBus | None = None) -> None:
        self.settings = settings
        self.db = db
        self.dataplane = dataplane
        self.bus = bus
        self._event_cache: dict[int, dict[str, Any]] = {}
        self._pools: dict[tuple[str, str], PortPool] = {}
        for gw in settings.gateway:
            for proto in ("tcp", "udp"):
                self._pools[(gw.name, proto)] = PortPool(gw.name, proto, gw.ranges)

    # --- the committed state, for the reconciler ----------------------------------------------------------------
    def enabled_rules(self, gw: GatewayDataplane, session: Session | None = None) -> list[ForwardRule]:
        """Rules of the gateway's enabled forwards, read through `session` (its uncommitted changes included)
        or, without one, from the committed state."""
        ext = gw.external_address
        if ext is None:
            raise DataplaneError(gw.last_error or "external address unknown")
        cols = (Forward.id, Forward.protocol, Forward.external_port, Forward.target_address, Forward.target_port,
                Forward.port_count, type_coerce(Forward.allowed_sources, String).label("allowed_sources"))
        query = select(*cols).where(Forward.gateway == gw.cfg.name, Forward.enabled.is_(True)).order_by(Forward.id)
        if session is not None:
            return [rule_of(r, ext) for r in session.execute(query)]
        with self.db.reader() as s:
            return [rule_of(r, ext) for r in s.execute(query)]

    # --- helpers -------------------------------------------------------------------------------------------------
    def _gateway(self, name: str | None) -> tuple[GatewayConfig, GatewayDataplane]:
        if name is None:
            if len(self.settings.gateway) != 1:
                raise InvalidInput("several gateways exist: name one with 'gateway'", field="gateway")
            cfg = self.settings.gateway[0]
        else:
            found = self.settings.get_gateway(name)
            if found is None:
                raise InvalidInput(f"gateway {name!r} does not exist", field="gateway")
            cfg = found
        gwdp = self.dataplane.get(cfg.name)
        assert gwdp is not None
        return cfg, gwdp

    def _external(self, gwdp: GatewayDataplane) -> ipaddress.IPv4Address:
        if gwdp.external_address is None and gwdp.worker is None:
            raise DataplaneUnavailable(
                f"gateway {gwdp.cfg.name!r} has external_address = \"auto\" and this process runs no dataplane to "
                "read it: set the gateway's external_address in the config")
        if gwdp.external_address is None:
            try:
                gwdp.refresh_addresses()
            except DataplaneError as exc:
                raise DataplaneUnavailable(f"gateway {gwdp.cfg.name!r} is not ready: {exc}") from None
        assert gwdp.external_address is not None
        return gwdp.external_address

    def _owned(self, s: Session, principal: Principal, forward_id: int, *, lock: bool = False) -> Forward:
        fwd = s.get(Forward, forward_id, with_for_update=lock or None)
        # Someone else's forward is reported exactly like a missing one: ids do not leak ownership.
        if fwd is None or (not principal.admin and fwd.owner != principal.owner):
            raise NotFound(f"forward {forward_id} does not exist")
        return fwd

    def _status(self, fwd: Forward) -> str:
        if not fwd.enabled:
            return "disabled"
        gwdp = self.dataplane.get(fwd.gateway)
        if gwdp is None or gwdp.health().status in ("error", "not_forwarding"):
            return "error"
        return "active"

    def _states(self, s: Session, forwards: list[Forward]) -> tuple[dict[int, ForwardState],
                                                                     dict[tuple[str, str], AddressHealth]]:
        """Usage and port health per forward, address health per (gateway, address): one query each."""
        if not forwards:
            return {}, {}
        ids = [f.id for f in forwards]
        states = {st.forward_id: st for st in s.scalars(select(ForwardState).where(ForwardState.forward_id.in_(ids)))}
        addresses = {f.target_address for f in forwards}
        health = {(h.gateway, h.address): h for h in s.scalars(
            select(AddressHealth).where(AddressHealth.address.in_(addresses)))}
        return states, health

    @staticmethod
    def health_of(fwd: Forward, st: ForwardState | None, addr: AddressHealth | None) -> dict[str, Any]:
        """up: the address answers and (TCP) the port accepts; down: either fails; unknown: not probed yet."""
        address_state = addr.state if addr else "unknown"
        port_state = st.port_state if st else "unknown"
        if address_state == "down" or port_state in ("refused", "timeout", "unreachable"):
            state = "down"
        elif address_state == "up" and (fwd.protocol == "udp" or port_state == "open"):
            state = "up"
        else:
            state = "unknown"
        return {
            "state": state,
            "address": address_state,
            "port": port_state if fwd.protocol == "tcp" else None,
            "rtt_ms": addr.rtt_ms if addr else None,
            "last_seen_at": addr.last_seen_at if addr else None,
            "last_checked_at": addr.last_checked_at if addr else None,
        }

    @staticmethod
    def usage_of(st: ForwardState | None) -> dict[str, Any]:
        return {
            "connections": st.connections if st else 0,
            "packets": st.packets if st else 0,
            "bytes": st.bytes if st else 0,
            "last_used_at": st.last_used_at if st else None,
        }

    def to_dict(self, fwd: Forward, st: ForwardState | None = None, addr: AddressHealth | None = None
                ) -> dict[str, Any]:
        gwdp = self.dataplane.get(fwd.gateway)
        ext = gwdp.external_address if gwdp else None
        return {
            "id": fwd.id,
            "gateway": fwd.gateway,
            "protocol": fwd.protocol,
            "external_address": str(ext) if ext else None,
            "external_port": fwd.external_port,
            "port_count": fwd.port_count,
            "target_address": fwd.target_address,
            "target_port": fwd.target_port,
            "name": fwd.name,
            "kind": fwd.kind,
            "owner": fwd.owner,
            "description": fwd.description,
            "enabled": fwd.enabled,
            "allowed_sources": list(fwd.allowed_sources or []),
            "status": self._status(fwd),
            "created_at": fwd.created_at,
            "updated_at": fwd.updated_at,
            "health": self.health_of(fwd, st, addr),
            "usage": self.usage_of(st),
        }

    def _dicts(self, s: Session, forwards: list[Forward]) -> list[dict[str, Any]]:
        states, health = self._states(s, forwards)
        return [self.to_dict(f, states.get(f.id), health.get((f.gateway, f.target_address))) for f in forwards]

    def event_fields(self, forward_id: int) -> dict[str, Any] | None:
        """gateway, owner and name of a forward, for connection events (cached: ids are never reused)."""
        cached = self._event_cache.get(forward_id)
        if cached is None:
            with self.db.reader() as s:
                row = s.execute(select(Forward.gateway, Forward.owner, Forward.name).where(
                    Forward.id == forward_id)).first()
            if row is None:
                return None
            if len(self._event_cache) > 100_000:
                self._event_cache.clear()
            cached = self._event_cache[forward_id] = {"gateway": row.gateway, "owner": row.owner, "name": row.name}
        return cached

    def _publish(self, action: str, fwd: Forward, **extra: Any) -> None:
        if self.bus is not None:
            self._event_cache.pop(fwd.id, None)
            self.bus.publish(Event.new("forward", action=action, gateway=fwd.gateway, forward_id=fwd.id,
                                       owner=fwd.owner, name=fwd.name, protocol=fwd.protocol,
                                       external_port=fwd.external_port, target_ip=fwd.target_address,
                                       target_port=fwd.target_port, enabled=fwd.enabled, **extra))

    def _commit_with_kernel(self, s: Session, gwdp: GatewayDataplane, remove: list[ForwardRule],
                            add: list[ForwardRule], cut: list[int]) -> None:
        """Apply the kernel change, then commit; on a kernel refusal roll back and raise 503. After the commit,
        outside the database transaction and the gateway lock, cut the open sessions of `cut` (before the caller
        answers, so a 2xx still means they are gone)."""
        with gwdp.lock:
            try:
                if gwdp.needs_full:
                    # The table may be missing or stale: replace it whole, from this session's (pending) view.
                    gwdp.full_sync(self.enabled_rules(gwdp, s))
                else:
                    try:
                        gwdp.apply(remove, add)
                    except DataplaneError:
                        log.warning("event=partial_sync_failed gateway=%s action=full_sync", gwdp.cfg.name)
                        gwdp.full_sync(self.enabled_rules(gwdp, s))
            except DataplaneError as exc:
                s.rollback()
                raise DataplaneUnavailable(f"the kernel refused the change on gateway {gwdp.cfg.name!r}: {exc}") \
                    from None
            try:
                s.commit()
            except Exception:
                s.rollback()
                # The kernel has a change the database does not: put it back to the committed state.
                gwdp.needs_full = True
                self.dataplane.reconcile_gateway(gwdp)
                raise
        gwdp.cut(cut)

    # --- commands ------------------------------------------------------------------------------------------------
    def create(self, principal: Principal, spec: ForwardSpec) -> dict[str, Any]:
        cfg, gwdp = self._gateway(spec.gateway)
        protocol = v.check_protocol(spec.protocol)
        count = v.check_port_count(spec.port_count)
        v.check_port(spec.target_port, "target_port", count)
        target = v.check_target(spec.target_address, cfg, gwdp.local_addresses)
        ext = self._external(gwdp)
        if target == ext:
            raise InvalidInput("target_address is the gateway's external address", field="target_address")
        sources = v.check_sources(spec.allowed_sources)
        name, kind = v.check_name(spec.name), v.check_kind(spec.kind)
        description = v.check_description(spec.description)
        pool = self._pools[(cfg.name, protocol)]
        if spec.external_port is not None:
            v.check_port(spec.external_port, "external_port", count)
            if not pool.in_ranges(spec.external_port, count):
                raise InvalidInput(
                    f"external_port {spec.external_port}" + (f"-{spec.external_port + count - 1}" if count > 1 else "")
                    + f" is not inside one of gateway {cfg.name!r}'s ranges ({', '.join(cfg.port_range)})",
                    field="external_port")

        with self.db.writer() as s:
            fwd = Forward(gateway=cfg.name, protocol=protocol, external_port=0, port_count=count,
                          target_address=str(target), target_port=spec.target_port, name=name, kind=kind,
                          owner=principal.owner, description=description, enabled=spec.enabled,
                          allowed_sources=sources)
            s.add(fwd)
            s.flush()
            start = self._allocate(s, pool, fwd, spec.external_port, count)
            committed = False
            try:
                fwd.external_port = start
                s.flush()
                rule = rule_of(fwd, ext)
                self._commit_with_kernel(s, gwdp, [], [rule] if fwd.enabled else [], [])
                committed = True
            finally:
                if not committed:
                    pool.release(start, count)
            log.info("event=forward_created id=%d owner=%s gateway=%s %s/%d -> %s:%d", fwd.id, fwd.owner,
                     cfg.name, protocol, start, fwd.target_address, fwd.target_port)
            self._publish("created", fwd)
        with self.db.reader() as r:
            return self._dicts(r, [fwd])[0]

    def _allocate(self, s: Session, pool: PortPool, fwd: Forward, requested: int | None, count: int) -> int:
        """Insert the allocation rows for `fwd`; returns the first port. 409 when taken or exhausted."""
        pool.ensure_loaded(s)
        for attempt in range(ALLOCATION_ATTEMPTS):
            if requested is not None:
                start = requested
            else:
                found = pool.take_lowest(count)
                if found is None and attempt == 0:
                    pool.load(s)  # maybe another process freed some
                    found = pool.take_lowest(count)
                if found is None:
                    raise RangeExhausted(
                        f"no free block of {count} {fwd.protocol} port(s) left on gateway {fwd.gateway!r}",
                        field="external_port")
                start = found
            try:
                with s.begin_nested():
                    s.add_all([PortAllocation(gateway=fwd.gateway, protocol=fwd.protocol, port=p, forward_id=fwd.id)
                               for p in range(start, start + count)])
                if requested is not None:
                    pool.take(start, count)
                return start
            except IntegrityError:
                if requested is not None:
                    holder = s.scalar(select(PortAllocation.forward_id).where(
                        PortAllocation.gateway == fwd.gateway, PortAllocation.protocol == fwd.protocol,
                        PortAllocation.port.between(start, start + count - 1)))
                    raise PortTaken(
                        f"external port {start}/{fwd.protocol} on gateway {fwd.gateway!r} is taken"
                        + (f" by forward {holder}" if holder else ""), holder=holder) from None
                pool.load(s)  # our picture was stale: another process allocated; search again
        raise RangeExhausted(f"could not allocate a port on gateway {fwd.gateway!r} after {ALLOCATION_ATTEMPTS} "
                             "attempts under contention; try again", field="external_port")

    def get(self, principal: Principal, forward_id: int) -> dict[str, Any]:
        with self.db.reader() as s:
            return self._dicts(s, [self._owned(s, principal, forward_id)])[0]

    def list(self, principal: Principal, flt: ForwardFilter, *, limit: int = 50,
             offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        conds = []
        if not principal.admin:
            conds.append(Forward.owner == principal.owner)
        elif flt.owner is not None:
            conds.append(Forward.owner == flt.owner)
        for col, value in ((Forward.name, flt.name), (Forward.kind, flt.kind),
                           (Forward.target_address, flt.target_address), (Forward.target_port, flt.target_port),
                           (Forward.protocol, flt.protocol), (Forward.gateway, flt.gateway)):
            if value is not None:
                conds.append(col == value)
        if flt.external_port is not None:
            conds.append(and_(Forward.external_port <= flt.external_port,
                              Forward.external_port + Forward.port_count > flt.external_port))
        where = and_(*conds) if conds else True
        with self.db.reader() as s:
            total = s.scalar(select(func.count()).select_from(Forward).where(where)) or 0
            rows = list(s.scalars(select(Forward).where(where).order_by(Forward.id).limit(limit).offset(offset)))
            return total, self._dicts(s, rows)

    def update(self, principal: Principal, forward_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        unknown = set(changes) - PATCHABLE
        if unknown:
            raise InvalidInput(f"cannot change {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
        for required in ("target_address", "target_port", "enabled", "allowed_sources"):
            if required in changes and changes[required] is None:
                # Opening a forward to anyone must be said explicitly (allowed_sources: []), never by a null.
                hint = " (use [] to allow any source)" if required == "allowed_sources" else ""
                raise InvalidInput(f"{required} cannot be null{hint}", field=required)
        with self.db.writer() as s:
            fwd = self._owned(s, principal, forward_id, lock=True)
            cfg, gwdp = self._gateway(fwd.gateway)
            ext = self._external(gwdp)
            old_rule = rule_of(fwd, ext) if fwd.enabled else None
            old_target = (fwd.target_address, fwd.target_port)
            if "target_address" in changes:
                target = v.check_target(changes["target_address"], cfg, gwdp.local_addresses)
                if target == ext:
                    raise InvalidInput("target_address is the gateway's external address", field="target_address")
                fwd.target_address = str(target)
            if "target_port" in changes:
                fwd.target_port = v.check_port(changes["target_port"], "target_port", fwd.port_count)
            if "allowed_sources" in changes:
                fwd.allowed_sources = v.check_sources(changes["allowed_sources"])
            if "description" in changes:
                fwd.description = v.check_description(changes["description"] or "")
            if "name" in changes:
                fwd.name = v.check_name(changes["name"])
            if "kind" in changes:
                fwd.kind = v.check_kind(changes["kind"])
            if "enabled" in changes:
                fwd.enabled = bool(changes["enabled"])
            new_rule = rule_of(fwd, ext) if fwd.enabled else None
            if new_rule != old_rule:
                s.flush()
                retargeted = old_target != (fwd.target_address, fwd.target_port)
                # Open sessions follow the old translation until their conntrack entries go.
                cut = [fwd.id] if old_rule and (new_rule is None or retargeted) else []
                self._commit_with_kernel(s, gwdp, [old_rule] if old_rule else [], [new_rule] if new_rule else [], cut)
            else:
                s.commit()
            log.info("event=forward_updated id=%d owner=%s fields=%s", fwd.id, principal.owner,
                     ",".join(sorted(changes)))
            self._publish("updated", fwd, changed=",".join(sorted(changes)))
        with self.db.reader() as r:
            return self._dicts(r, [fwd])[0]

    def delete(self, principal: Principal, forward_id: int) -> None:
        with self.db.writer() as s:
            fwd = self._owned(s, principal, forward_id, lock=True)
            cfg, gwdp = self._gateway(fwd.gateway)
            old_rule = rule_of(fwd, self._external(gwdp)) if fwd.enabled else None
            start, count, proto = fwd.external_port, fwd.port_count, fwd.protocol
            s.delete(fwd)
            s.flush()
            self._commit_with_kernel(s, gwdp, [old_rule] if old_rule else [], [], [forward_id] if old_rule else [])
            self._pools[(cfg.name, proto)].release(start, count)
            log.info("event=forward_deleted id=%d owner=%s", forward_id, principal.owner)
            self._publish("deleted", fwd)

    # --- views ---------------------------------------------------------------------------------------------------
    def machines(self, principal: Principal, *, name: str | None = None, kind: str | None = None,
                 owner: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """The IPAM view: one entry per machine name (per owner), with its kind, addresses, health and forwards.
        status: "up" (every address answers), "down" (one does not: a bad record), "unknown" (not probed yet)."""
        query = select(Forward).where(Forward.name.is_not(None)).order_by(Forward.name, Forward.id)
        if not principal.admin:
            query = query.where(Forward.owner == principal.owner)
        elif owner is not None:
            query = query.where(Forward.owner == owner)
        if name is not None:
            query = query.where(Forward.name == name)
        if kind is not None:
            query = query.where(Forward.kind == kind)
        machines: dict[tuple[str, str], dict[str, Any]] = {}
        with self.db.reader() as s:
            rows = list(s.scalars(query))
            states, health = self._states(s, rows)
            for fwd in rows:
                entry = machines.setdefault((fwd.owner, fwd.name), {
                    "name": fwd.name, "kind": fwd.kind, "owner": fwd.owner, "addresses": [], "forwards": [],
                    "address_health": {}})
                entry["kind"] = entry["kind"] or fwd.kind
                if fwd.target_address not in entry["addresses"]:
                    entry["addresses"].append(fwd.target_address)
                h = health.get((fwd.gateway, fwd.target_address))
                entry["address_health"][fwd.target_address] = h.state if h else "unknown"
                entry["forwards"].append(self.to_dict(fwd, states.get(fwd.id), h))
        out = []
        for entry in machines.values():
            states_seen = set(entry["address_health"].values())
            entry["status"] = "down" if "down" in states_seen else "up" if states_seen == {"up"} else "unknown"
            if status is None or entry["status"] == status:
                out.append(entry)
        return out

    def gateways(self) -> list[dict[str, Any]]:
        with self.db.reader() as s:
            taken = {(g, p): n for g, p, n in s.execute(
                select(PortAllocation.gateway, PortAllocation.protocol, func.count()).group_by(
                    PortAllocation.gateway, PortAllocation.protocol))}
            counts = dict(s.execute(select(Forward.gateway, func.count()).group_by(Forward.gateway)).all())
        out = []
        for cfg in self.settings.gateway:
            gwdp = self.dataplane.get(cfg.name)
            assert gwdp is not None
            health = gwdp.health()
            size = sum(hi - lo + 1 for lo, hi in cfg.ranges)
            out.append({
                "name": cfg.name,
                "netns": cfg.netns,
                "external_address": str(gwdp.external_address) if gwdp.external_address else None,
                "port_ranges": cfg.port_range,
                "target_networks": cfg.target_networks,
                "masquerade": cfg.masquerade,
                "ports_total": size,
                "ports_free": {p: size - taken.get((cfg.name, p), 0) for p in ("tcp", "udp")},
                "forwards": counts.get(cfg.name, 0),
                "status": health.status,
                "last_error": health.last_error,
                "last_sync_at": health.last_full_sync_at,
                "forwards_in_kernel": health.forwards_in_kernel,
                "problems": [{"check": p.check, "message": p.message, "fix": p.fix} for p in health.problems],
            })
        return out
