"""Forwards: create, read, change, delete - each one database transaction whose kernel change is synced before
the commit (through the dataplane's one sync entry point), so a 2xx answer means the kernel already forwards, and
any error leaves nothing half-applied."""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labgate.config import GatewayConfig, Settings
from labgate.core import audit
from labgate.core import validation as v
from labgate.core.errors import (
    DataplaneUnavailable,
    InvalidInput,
    NotFound,
    PortTaken,
    RangeExhausted,
)
from labgate.core.cloud import Resolved, TargetResolver
from labgate.core.limits import check_quota
from labgate.core.ports import PortPool
from labgate.core.rules import CommittedRules, rule_of
from labgate.core.tokens import Principal
from labgate.core.views import ForwardView
from labgate.dataplane.reconcile import ChangeRefused, Dataplane, DataplaneError, GatewayDataplane, RuleChange
from labgate.db import cluster
from labgate.db.ids import reserve_forward_id
from labgate.db.models import Forward, PortAllocation
from labgate.db.queries import forward_states, port_holder, project_gateways
from labgate.db.session import Database
from labgate.events import Discard, Event, Publisher

log = logging.getLogger("labgate.forwards")

# Blocks tried in turn when other processes (API replicas) allocate on the same gateway at the same time.
ALLOCATION_ATTEMPTS = 64
PATCHABLE = {"description", "enabled", "allowed_sources", "target_address", "target_port", "name", "kind"}


@dataclass
class ForwardSpec:
    """A create request, as the API received it (types already checked, domain checks not yet)."""

    target_address: str | None
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
    # OpenStack: follow this Neutron port, or the port of this server (id or name), instead of an address.
    target_port_id: str | None = None
    target_server: str | None = None


@dataclass
class Prepared:
    """A create that passed every check made without a transaction (ForwardService.prepare)."""

    spec: ForwardSpec
    cfg: GatewayConfig
    gwdp: GatewayDataplane
    ext: ipaddress.IPv4Address
    pool: PortPool
    protocol: str
    count: int
    target: str
    cloud: Resolved | None
    sources: list[str]
    name: str | None
    kind: str | None
    description: str


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


def external_of(gwdp: GatewayDataplane) -> ipaddress.IPv4Address:
    """The gateway's external address, learned now if still unknown. 503 when it cannot be known."""
    if gwdp.external_address is None and gwdp.kernel is None:
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


def gateway_works(gwdp: GatewayDataplane | None) -> bool:
    """Can the gateway apply and route forwards now? (Its forwards' status is "error" when not.)"""
    return gwdp is not None and gwdp.health().status not in ("error", "not_forwarding")


def forward_views(s: Session, dataplane: Dataplane, forwards: list[Forward]) -> list[ForwardView]:
    states, health = forward_states(s, forwards)
    # Gateways whose kernel another process (their agent) programs: what it applied decides the status.
    remote = {f.gateway for f in forwards if (gw := dataplane.get(f.gateway)) is not None and gw.kernel is None}
    syncs = cluster.gateway_syncs(s, remote) if remote else {}
    out = []
    for f in forwards:
        gwdp = dataplane.get(f.gateway)
        ext = gwdp.external_address if gwdp else None
        if f.gateway in remote:
            sync = syncs.get(f.gateway)
            ext = ext or (sync.external_address if sync else None)
            out.append(ForwardView.of(f, external_address=str(ext) if ext else None, gateway_ok=True,
                                      st=states.get(f.id), addr=health.get((f.gateway, f.target_address)),
                                      agent=agent_verdict(sync, f.generation)))
            continue
        out.append(ForwardView.of(f, external_address=str(ext) if ext else None, gateway_ok=gateway_works(gwdp),
                                  st=states.get(f.id), addr=health.get((f.gateway, f.target_address))))
    return out


def agent_verdict(sync: cluster.GatewaySync | None, generation: int) -> tuple[str, str | None] | None:
    """For a forward on a gateway another process programs: ("pending" | "failed", why), or None once applied."""
    if sync is None or not sync.agent:
        return ("pending", "no agent has applied this gateway yet")
    if not sync.agent_alive:
        return ("pending", f"the gateway's agent {sync.agent!r} is not running (no heartbeat)")
    if sync.failed(generation):
        return ("failed", sync.last_error)
    if sync.pending(generation):
        return ("pending", f"waiting for agent {sync.agent!r}")
    return None


class ForwardService:
    """The forward commands. Events go to `publisher` (the bus, in a running service); nothing here knows who
    delivers them."""

    def __init__(self, settings: Settings, db: Database, dataplane: Dataplane,
                 publisher: Publisher | None = None) -> None:
        self.settings = settings
        self.db = db
        self.dataplane = dataplane
        self.publisher: Publisher = publisher or Discard()
        self.rules = CommittedRules(db)
        # How a create naming a Neutron port or server finds its gateway and address ([openstack]; else None).
        self.targets: TargetResolver | None = None
        self._pools: dict[tuple[str, str], PortPool] = {}
        self._pools_lock = threading.Lock()

    # --- helpers -------------------------------------------------------------------------------------------------
    def _pool(self, cfg: GatewayConfig, protocol: str) -> PortPool:
        """The port picture of (gateway, protocol), made on first use (gateways come and go at run time)."""
        with self._pools_lock:
            pool = self._pools.get((cfg.name, protocol))
            if pool is None or pool.ranges != sorted(cfg.ranges):
                pool = self._pools[(cfg.name, protocol)] = PortPool(cfg.name, protocol, cfg.ranges)
            return pool

    def find_gateway(self, name: str | None, project: str | None = None) -> GatewayDataplane:
        """A gateway by name, or (OpenStack) by its router's id or name (with `project`, a project-scoped caller's:
        among that project's routers only); with no name, the only gateway there is. InvalidInput when there is
        none or several."""
        # A gateway being taken out of service (its router went) is already gone for callers.
        gateways = {n: g for n, g in self.dataplane.gateways.items() if not g.retiring}
        if name is None:
            if len(gateways) != 1:
                raise InvalidInput("several gateways exist: name one with 'gateway'" if gateways else
                                   "there is no gateway yet", field="gateway")
            return next(iter(gateways.values()))
        found = gateways.get(name)
        if found is None:
            routers = [g for g in gateways.values() if g.cfg.router_id is not None
                       and name in (g.cfg.router_id, g.cfg.router_name)
                       and (project is None or g.cfg.project_id == project)]
            if len(routers) > 1:
                raise InvalidInput(f"{len(routers)} routers are called {name!r}: name the gateway by router id",
                                   field="gateway")
            found = routers[0] if routers else None
        if found is None:
            raise InvalidInput(f"gateway {name!r} does not exist", field="gateway")
        return found

    @staticmethod
    def _check_project(principal: Principal, cfg: GatewayConfig) -> None:
        """A project-scoped token may use only its project's routers."""
        if principal.project is not None and cfg.project_id != principal.project:
            raise InvalidInput(f"gateway {cfg.name!r} is not a router of project {principal.project}",
                               field="gateway")

    def _gateway(self, name: str | None, project: str | None = None) -> tuple[GatewayConfig, GatewayDataplane]:
        gwdp = self.find_gateway(name, project)
        if gwdp.kernel is None and gwdp.external_address is None:
            # An "auto" address this process cannot read: the gateway's agent says what it found.
            with self.db.reader() as r:
                known = cluster.gateway_syncs(r, [gwdp.cfg.name]).get(gwdp.cfg.name)
            if known is not None and known.external_address:
                gwdp.external_address = ipaddress.IPv4Address(known.external_address)
        return gwdp.cfg, gwdp

    def _owned(self, s: Session, principal: Principal, forward_id: int, *, lock: bool = False) -> Forward:
        fwd = s.get(Forward, forward_id, with_for_update=lock or None)
        # Someone else's forward is reported exactly like a missing one: ids do not leak ownership.
        if fwd is None or not self._visible(principal, fwd):
            raise NotFound(f"forward {forward_id} does not exist")
        return fwd

    def _visible(self, principal: Principal, fwd: Forward) -> bool:
        """Admins see every forward; a project-scoped token those on its project's routers (a project's resources
        are shared by its members, as in OpenStack); any other token its owner's."""
        if principal.admin:
            return True
        if principal.project is not None:
            return fwd.gateway in project_gateways(self.db, principal.project)
        return fwd.owner == principal.owner

    def _view(self, fwd: Forward) -> ForwardView:
        with self.db.reader() as r:
            return forward_views(r, self.dataplane, [fwd])[0]

    def _publish(self, action: str, fwd: Forward, **extra: Any) -> None:
        self.publisher.publish(Event.new("forward", action=action, gateway=fwd.gateway, forward_id=fwd.id,
                                         owner=fwd.owner, name=fwd.name, protocol=fwd.protocol,
                                         external_port=fwd.external_port, target_ip=fwd.target_address,
                                         target_port=fwd.target_port, enabled=fwd.enabled, **extra))

    def _commit_synced(self, s: Session, gwdp: GatewayDataplane, change: RuleChange, cut: list[int]) -> bool:
        """Sync the kernel (partial, or full from this session's pending view), then commit; a kernel refusal
        rolls back and answers 503. After the commit, outside the transaction and the gateway lock, cut the open
        sessions of `cut` (before the caller answers, so a 2xx still means they are gone).

        The commit bumps the gateway's generation (db/cluster.py). A gateway this process runs no kernel for
        (`serve --no-agent`: its agent is another process) is only committed, and then waited for: True once its
        agent applied the change, False after `agent_wait` seconds (the change is pending) or when it failed."""
        remote = gwdp.kernel is None
        try:
            with self.dataplane.change(gwdp.cfg.name) as gw:
                try:
                    gw.sync(change, desired=lambda _ext: self.rules.enabled_rows(gw.cfg.name, s))
                except ChangeRefused as exc:
                    s.rollback()
                    raise InvalidInput(f"the kernel refused this change on gateway {gw.cfg.name!r} (nothing was "
                                       f"changed): {exc}") from None
                except DataplaneError as exc:
                    s.rollback()
                    raise DataplaneUnavailable(f"the kernel refused the change on gateway {gw.cfg.name!r}: {exc}") \
                        from None
                try:
                    generation = cluster.bump(s, gw.cfg.name, applied=not remote,
                                              forward_ids=[r.id for r in (*change.remove, *change.add)])
                    s.commit()
                except Exception:
                    s.rollback()
                    raise
        except DataplaneError as exc:  # only change() itself: the gateway (a router gone) was removed meanwhile
            s.rollback()
            raise DataplaneUnavailable(f"{exc} while this request ran (nothing was changed); try again") from None
        if remote:
            return cluster.wait_applied(self.db, gwdp.cfg.name, generation, self.settings.server.agent_wait)
        gwdp.cut(cut)
        return True

    # --- commands ------------------------------------------------------------------------------------------------
    def _resolve(self, principal: Principal, spec: ForwardSpec) -> tuple[str | None, str, Resolved | None]:
        """(gateway, target address, the cloud port it follows) of a create."""
        if spec.target_port_id is not None or spec.target_server is not None:
            if self.targets is None:
                raise InvalidInput("target_port_id and target_server need OpenStack ([openstack] in the config)",
                                   field="target_port_id" if spec.target_port_id is not None else "target_server")
            if spec.target_address is not None:
                raise InvalidInput("give target_address, or target_port_id / target_server, not both",
                                   field="target_address")
            if spec.target_port_id is not None and spec.target_server is not None:
                raise InvalidInput("give target_port_id or target_server, not both", field="target_server")
            port_id = v.check_cloud_id(spec.target_port_id, "target_port_id") if spec.target_port_id else None
            server = v.check_server(spec.target_server) if spec.target_server is not None else None
            gateway = (self.find_gateway(spec.gateway, principal.project).cfg.name if spec.gateway is not None
                       else None)
            found = self.targets.resolve(gateway=gateway, address=None, port_id=port_id, server=server,
                                         project=principal.project)
            return found.gateway, found.address, found
        if spec.target_address is None:
            raise InvalidInput("target_address is required (or, with OpenStack, target_port_id or target_server)",
                               field="target_address")
        return spec.gateway, spec.target_address, None

    def prepare(self, principal: Principal, spec: ForwardSpec) -> "Prepared":
        """Every check of a create that needs no transaction: the gateway, the target, the fields. Raises
        InvalidInput (or NotFound for a cloud target) naming the field."""
        gateway, address, cloud = self._resolve(principal, spec)
        cfg, gwdp = self._gateway(gateway, principal.project)
        self._check_project(principal, cfg)
        protocol = v.check_protocol(spec.protocol)
        count = v.check_port_count(spec.port_count)
        v.check_port(spec.target_port, "target_port", count)
        target = v.check_target(address, cfg, gwdp.local_addresses)
        if cloud is None and cfg.router_id is not None and self.targets is not None:
            # An address on a router: bound to the Neutron port that holds it, if one does (no API call).
            found = self.targets.resolve(gateway=cfg.name, address=str(target), port_id=None, server=None,
                                         project=principal.project)
            cloud = found if found.port_id is not None else None
        ext = external_of(gwdp)
        if target == ext:
            raise InvalidInput("target_address is the gateway's external address", field="target_address")
        sources = v.check_sources(spec.allowed_sources)
        name, kind = v.check_name(spec.name), v.check_kind(spec.kind)
        description = v.check_description(spec.description)
        pool = self._pool(cfg, protocol)
        if spec.external_port is not None:
            v.check_port(spec.external_port, "external_port", count)
            if not pool.in_ranges(spec.external_port, count):
                raise InvalidInput(
                    f"external_port {spec.external_port}" + (f"-{spec.external_port + count - 1}" if count > 1 else "")
                    + f" is not inside one of gateway {cfg.name!r}'s ranges ({', '.join(cfg.port_range)})",
                    field="external_port")
        return Prepared(spec, cfg, gwdp, ext, pool, protocol, count, str(target), cloud, sources, name, kind,
                        description)

    def new_forward(self, principal: Principal, p: "Prepared", forward_id: int | None) -> Forward:
        """The row of a prepared create (not added to a session)."""
        fwd = Forward(id=forward_id, gateway=p.cfg.name, protocol=p.protocol, external_port=0, port_count=p.count,
                      target_address=p.target, target_port=p.spec.target_port, name=p.name, kind=p.kind,
                      owner=principal.owner, description=p.description, enabled=p.spec.enabled,
                      allowed_sources=p.sources)
        if p.cloud is not None:
            fwd.target_port_id, fwd.target_server_id = p.cloud.port_id, p.cloud.server_id
            fwd.target_server_name = p.cloud.server_name
        return fwd

    def create(self, principal: Principal, spec: ForwardSpec) -> ForwardView:
        p = self.prepare(principal, spec)
        cfg, gwdp, pool, protocol, count = p.cfg, p.gwdp, p.pool, p.protocol, p.count
        with self.db.writer() as s:
            check_quota(s, self.settings.limits, principal, count)
            self._check_ports_free(s, pool, cfg.name, protocol, spec.external_port, count, principal)
            # Nothing refuses the create from here on but a race or the kernel: only now is its id taken (a
            # refused create takes none), and on SQLite committed before the kernel sees it as a mark, so that a
            # create rolled back after its kernel change never hands its id to another forward (db/ids.py).
            reserved = reserve_forward_id(s)
            if reserved is not None:
                # The id was committed with the checks' transaction; another writer may have come between it and
                # this one (then this create is refused after all, and its id stays unused).
                check_quota(s, self.settings.limits, principal, count)
            fwd = self.new_forward(principal, p, reserved)
            s.add(fwd)
            s.flush()
            start = self._allocate(s, pool, fwd, spec.external_port, count, principal)
            committed = False
            try:
                fwd.external_port = start
                s.flush()
                trail = audit.record(s, principal, "forward.create", fwd.id, before=None,
                                     after=audit.forward_snapshot(fwd))
                self._commit_synced(s, gwdp, RuleChange.of(add=[rule_of(fwd, p.ext) if fwd.enabled else None]), [])
                committed = True
            finally:
                if not committed:
                    pool.release(start, count)
            log.info("event=forward_created id=%d owner=%s gateway=%s %s/%d -> %s:%d", fwd.id, fwd.owner,
                     cfg.name, protocol, start, fwd.target_address, fwd.target_port)
            self._publish("created", fwd)
            self.publisher.publish(trail)
        return self._view(fwd)

    def _check_ports_free(self, s: Session, pool: PortPool, gateway: str, protocol: str, requested: int | None,
                          count: int, principal: Principal) -> None:
        """409 when the requested ports are taken, or no block of `count` ports is free: what `_allocate` would
        answer, found by reading only (it needs the forward's id, which is taken after every check that can
        refuse)."""
        if requested is not None:
            holder = port_holder(s, gateway, protocol, requested, requested + count - 1)
            if holder is not None:
                raise self._port_taken(s, gateway, protocol, requested, holder, principal)
            return
        pool.ensure_loaded(s)
        found = pool.take_lowest(count)
        if found is None:
            pool.load(s)  # maybe another process freed some
            found = pool.take_lowest(count)
        if found is None:
            raise RangeExhausted(f"no free block of {count} {protocol} port(s) left on gateway {gateway!r}",
                                 field="external_port")
        pool.release(found, count)  # a look only: `_allocate` takes the block

    @staticmethod
    def _port_taken(s: Session, gateway: str, protocol: str, start: int, holder: int | None,
                    principal: Principal) -> PortTaken:
        held = s.get(Forward, holder) if holder is not None else None
        if held is None or not (principal.admin or held.owner == principal.owner):
            holder = None  # someone else's forward: its id is theirs to know
        return PortTaken(f"external port {start}/{protocol} on gateway {gateway!r} is taken"
                         + (f" by forward {holder}" if holder else ""), holder=holder)

    def _allocate(self, s: Session, pool: PortPool, fwd: Forward, requested: int | None, count: int,
                  principal: Principal) -> int:
        """Insert the allocation rows for `fwd`; returns the first port. 409 when taken or exhausted."""
        pool.ensure_loaded(s)
        reloaded = False
        for _ in range(ALLOCATION_ATTEMPTS):
            if requested is not None:
                start = requested
            else:
                found = pool.take_lowest(count)
                if found is None and not reloaded:
                    pool.load(s)  # maybe another process freed some (once: the database's picture, then ours)
                    reloaded = True
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
                    holder = port_holder(s, fwd.gateway, fwd.protocol, start, start + count - 1)
                    raise self._port_taken(s, fwd.gateway, fwd.protocol, start, holder, principal) from None
                # Another process holds (part of) that block, committed or still in flight: it stays marked taken
                # here and the next free block is tried. (Reloading the picture from the database instead would
                # forget the blocks this process's own requests have in flight, and collide with them next.)
        raise RangeExhausted(f"could not allocate a port on gateway {fwd.gateway!r} after {ALLOCATION_ATTEMPTS} "
                             "attempts under contention; try again", field="external_port")

    def get(self, principal: Principal, forward_id: int) -> ForwardView:
        with self.db.reader() as s:
            return forward_views(s, self.dataplane, [self._owned(s, principal, forward_id)])[0]

    def list(self, principal: Principal, flt: ForwardFilter, *, limit: int = 50,
             offset: int = 0) -> tuple[int, list[ForwardView]]:
        conds = []
        if principal.project is not None and not principal.admin:
            conds.append(Forward.gateway.in_(project_gateways(self.db, principal.project)))
            if flt.owner is not None:
                conds.append(Forward.owner == flt.owner)
        elif not principal.admin:
            conds.append(Forward.owner == principal.owner)
        elif flt.owner is not None:
            conds.append(Forward.owner == flt.owner)
        if flt.gateway is not None and flt.gateway not in self.dataplane.gateways:
            # A router's id or name stands for its gateway here too (an unknown name simply matches nothing).
            routers = [g.cfg.name for g in self.dataplane.gateways.values() if g.cfg.router_id is not None
                       and flt.gateway in (g.cfg.router_id, g.cfg.router_name)
                       and (principal.project is None or principal.admin or g.cfg.project_id == principal.project)]
            if len(routers) == 1:
                flt = replace(flt, gateway=routers[0])
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
            return total, forward_views(s, self.dataplane, rows)

    def update(self, principal: Principal, forward_id: int, changes: dict[str, Any]) -> ForwardView:
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
            if fwd.orphaned_at is not None:
                raise InvalidInput(f"forward {forward_id} is orphaned ({fwd.orphaned_reason}): it can only be "
                                   "deleted", field=sorted(changes)[0] if changes else None)
            before = audit.forward_snapshot(fwd)
            cfg, gwdp = self._gateway(fwd.gateway)
            ext = external_of(gwdp)
            old_rule = rule_of(fwd, ext) if fwd.enabled else None
            old_target = (fwd.target_address, fwd.target_port)
            if "target_address" in changes:
                target = v.check_target(changes["target_address"], cfg, gwdp.local_addresses)
                if target == ext:
                    raise InvalidInput("target_address is the gateway's external address", field="target_address")
                if str(target) != fwd.target_address:
                    # An address given by hand: the forward follows the Neutron port holding it now, if one does
                    # (checked as at create: never another project's), else none until the monitor finds one.
                    fwd.target_port_id = fwd.target_server_id = fwd.target_server_name = None
                    if cfg.router_id is not None and self.targets is not None:
                        found = self.targets.resolve(gateway=cfg.name, address=str(target), port_id=None,
                                                     server=None, project=principal.project)
                        fwd.target_port_id, fwd.target_server_id = found.port_id, found.server_id
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
            trail = audit.record(s, principal, "forward.update", fwd.id, before=before,
                                 after=audit.forward_snapshot(fwd))
            if new_rule != old_rule:
                retargeted = old_target != (fwd.target_address, fwd.target_port)
                # Open sessions follow the old translation until their conntrack entries go.
                cut = [fwd.id] if old_rule and (new_rule is None or retargeted) else []
                self._commit_synced(s, gwdp, RuleChange.of([old_rule], [new_rule]), cut)
            else:
                s.commit()
            log.info("event=forward_updated id=%d owner=%s fields=%s", fwd.id, principal.owner,
                     ",".join(sorted(changes)))
            self._publish("updated", fwd, changed=",".join(sorted(changes)))
            self.publisher.publish(trail)
        return self._view(fwd)

    def delete(self, principal: Principal, forward_id: int) -> bool:
        """Delete a forward. True once its rule is gone from the kernel; False when its gateway's agent (another
        process) has not applied the deletion yet (it is committed: the agent will)."""
        applied = True
        with self.db.writer() as s:
            fwd = self._owned(s, principal, forward_id, lock=True)
            trail = audit.record(s, principal, "forward.delete", fwd.id, before=audit.forward_snapshot(fwd),
                                 after=None)
            gwdp = self.dataplane.get(fwd.gateway)
            start, count, proto = fwd.external_port, fwd.port_count, fwd.protocol
            if gwdp is None or fwd.orphaned_at is not None:
                # Orphaned (no rules), or its router is gone with its namespace: only the rows go.
                s.delete(fwd)
                s.commit()
            else:
                old_rule = rule_of(fwd, external_of(gwdp)) if fwd.enabled else None
                s.delete(fwd)
                s.flush()
                applied = self._commit_synced(s, gwdp, RuleChange.of([old_rule]), [forward_id] if old_rule else [])
            if gwdp is not None:
                self._pool(gwdp.cfg, proto).release(start, count)
            log.info("event=forward_deleted id=%d owner=%s", forward_id, principal.owner)
            self._publish("deleted", fwd)
            self.publisher.publish(trail)
        return applied

