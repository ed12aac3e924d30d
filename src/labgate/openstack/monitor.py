"""The OpenStack monitor: each `monitor_interval`, one batched look at the cloud (openstack/cloud.py), compared
with what labgate holds, and the differences applied through core (one transaction and one kernel change per
gateway):

- routers with an external gateway become gateways (namespace `qrouter-<id>`, external address, target networks
  = their internal subnets); a router that vanishes or loses its gateway leaves, its forwards orphaned;
- forwards that follow a Neutron port are retargeted when its fixed IP changes, and deleted (or orphaned) when the
  port is deleted or its device_id cleared (Nova deleting the VM);
- forwards given only an address on a router gateway are bound to the port that holds the address.

A cycle whose look failed touches nothing; it is retried with backoff. The routers are kept in the database
(`cloud_routers`) so that a restart restores their rules before (and without) the cloud answering.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from labgate.config import GatewayConfig, OpenStackConfig, router_gateway_name, router_netns
from labgate.core import cloud as core_cloud
from labgate.core.cloud import CloudChange, Resolved
from labgate.core.errors import DataplaneUnavailable, InvalidInput
from labgate.core.forwards import ForwardService
from labgate.dataplane.netns import NETNS_DIR
from labgate.dataplane.reconcile import Dataplane
from labgate.db import queries
from labgate.db.session import Database
from labgate.events import Event, Publisher
from labgate.openstack.cloud import Cloud, CloudError, NameNotUsable
from labgate.openstack.topology import Port, Router, Snapshot
from labgate.periodic import Periodic

log = logging.getLogger("labgate.openstack")

CYCLE_SECONDS = Histogram("labgate_openstack_cycle_seconds", "Duration of one OpenStack monitor cycle",
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
CYCLES = Counter("labgate_openstack_cycles_total", "OpenStack monitor cycles", ["outcome"])
CHANGES = Counter("labgate_openstack_changes_total", "Changes the OpenStack monitor applied", ["change"])
ROUTERS = Gauge("labgate_openstack_routers", "Routers served as gateways")
MAX_BACKOFF = 300.0


@dataclass
class CycleReport:
    started_at: str | None = None
    seconds: float | None = None
    api_calls: int = 0
    routers: int = 0
    ports: int = 0
    changes: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class OpenStackMonitor:
    """Routers as gateways and forwards that follow their VM; also the TargetResolver core asks at create."""

    def __init__(self, cfg: OpenStackConfig, db: Database, dataplane: Dataplane, forwards: ForwardService,
                 publisher: Publisher, cloud: Cloud | None = None) -> None:
        self.cfg = cfg
        self.db = db
        self.dataplane = dataplane
        self.forwards = forwards
        self.publisher = publisher
        self.cloud = cloud or Cloud(cfg)
        self.snapshot: Snapshot | None = None
        self.last = CycleReport()
        self.last_success: CycleReport | None = None
        self.failures = 0
        self._held_loss = False  # the last look listed none of the served routers: held, waiting for a second
        self._cycle_lock = threading.Lock()
        self._loop = Periodic("openstack", self._next_wait, self.cycle, logger=log,
                              failure_event="openstack_cycle_crashed")

    # --- life cycle ---------------------------------------------------------------------------------------------
    def restore(self) -> int:
        """Serve the routers the database remembers (before the first look at the cloud): a restart brings back
        their rules even while the cloud does not answer. Returns how many."""
        rows = queries.cloud_routers(self.db)
        for row in rows:
            if row.gone_at is None:
                self.dataplane.put_gateway(self._config(row.gateway, row.router_id, row.router_name, row.project_id,
                                                        row.external_address, row.target_networks))
        ROUTERS.set(sum(1 for r in rows if r.gone_at is None))
        return len(rows)

    def follow(self, *, local_only: bool = False) -> int:
        """In a cluster, where another process runs the monitor: serve the routers the database lists now, and stop
        serving those it no longer lists. An agent (`local_only`) serves only the routers whose `qrouter-*`
        namespace is on this host; an API replica serves them all (without a kernel). Returns how many it serves."""
        wanted: dict[str, GatewayConfig] = {}
        for row in queries.cloud_routers(self.db):
            if row.gone_at is not None:
                continue
            cfg = self._config(row.gateway, row.router_id, row.router_name, row.project_id, row.external_address,
                               row.target_networks)
            if local_only and not os.path.exists(os.path.join(NETNS_DIR, cfg.netns or "")):
                continue
            wanted[cfg.name] = cfg
        for name, cfg in wanted.items():
            gw = self.dataplane.get(name)
            if gw is None or gw.cfg != cfg:
                self.dataplane.put_gateway(cfg)
        for name, gw in list(self.dataplane.gateways.items()):
            if gw.cfg.router_id and name not in wanted:
                self.dataplane.remove_gateway(name)
        ROUTERS.set(len(wanted))
        return len(wanted)

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float = 10) -> None:
        self._loop.stop(timeout)

    def trigger(self) -> None:
        self._loop.trigger()

    def _next_wait(self) -> float:
        if self.failures:
            return min(self.cfg.monitor_interval, 2.0 * 2 ** min(self.failures - 1, 8), MAX_BACKOFF)
        return self.cfg.monitor_interval

    def status(self) -> dict[str, Any]:
        return {"cloud": self.cfg.cloud, "monitor_interval": self.cfg.monitor_interval,
                "on_target_deleted": self.cfg.on_target_deleted, "projects": list(self.cfg.projects),
                "consecutive_failures": self.failures,
                "last_cycle": asdict(self.last),
                "last_successful_cycle": asdict(self.last_success) if self.last_success else None}

    # --- one cycle ----------------------------------------------------------------------------------------------
    def cycle(self) -> CycleReport:
        with self._cycle_lock:
            report = CycleReport(started_at=_now())
            started = time.perf_counter()
            calls_before = self.cloud.calls
            looked_at = datetime.now(timezone.utc)  # forwards made or changed after this are the next look's
            try:
                snap = self.cloud.snapshot()
                self._check_look(snap, looked_at)
            except CloudError as exc:
                report.error = str(exc)
                report.api_calls = self.cloud.calls - calls_before
                report.seconds = round(time.perf_counter() - started, 4)
                self.failures += 1
                if self.last.error != report.error:
                    log.error("event=openstack_cycle_failed error=%r (nothing changed; retrying)", report.error)
                self.last = report
                CYCLES.labels("failed").inc()
                return report
            report.routers, report.ports = len(snap.routers), len(snap.ports)
            self.snapshot = snap
            try:
                self._apply(snap, report, looked_at)
            except Exception as exc:  # noqa: BLE001 - reported, retried next cycle
                report.error = f"applying the cloud's changes: {exc}"
                log.exception("event=openstack_apply_failed")
            report.api_calls = self.cloud.calls - calls_before
            report.seconds = round(time.perf_counter() - started, 4)
            CYCLE_SECONDS.observe(report.seconds)
            self.failures = 0 if report.error is None else self.failures + 1
            CYCLES.labels("ok" if report.error is None else "failed").inc()
            if self.last.error and report.error is None:
                log.info("event=openstack_cycle_recovered")
            self.last = report
            if report.error is None:
                self.last_success = report
            if report.changes:
                log.info("event=openstack_cycle changes=%s seconds=%.3f api_calls=%d", report.changes,
                         report.seconds, report.api_calls)
            return report

    def _check_look(self, snap: Snapshot, looked_at: datetime) -> None:
        """Refuse (CloudError: nothing is touched) a look that would lose what it cannot be trusted to lose:

        - ports that forwards follow, missing from the listing while a lookup by id finds them (a listing cut
          short): deleting their forwards could not be undone;
        - all of several routers labgate serves, gone at once (credentials that lost the admin role, a wrong project
          filter, a cloud answering empty): held for one more look, and applied only if that one agrees. Their
          forwards would be orphaned, which a router's return undoes, but their traffic stops meanwhile. (One router
          deleted goes at once, even when it is the only one.)"""
        followed = queries.followed_ports(self.db, looked_at)  # newer forwards are the next look's
        missing = {pid for pid in followed if pid not in snap.ports}
        if missing:
            there = self.cloud.existing_ports(missing)
            if there:
                raise CloudError(f"the port listing left out {len(there)} port(s) that exist (e.g. "
                                 f"{sorted(there)[0]}); nothing changed")
        served = {row.router_id for row in queries.cloud_routers(self.db) if row.gone_at is None}
        listed = {r.id for r in snap.routers.values() if r.external_address is not None}
        if len(served) > 1 and not (served & listed):
            if not self._held_loss:
                self._held_loss = True
                raise CloudError(f"the cloud listed none of the {len(served)} routers labgate serves (lost "
                                 "permissions, or a wrong project filter?): held until the next look agrees")
            log.warning("event=all_routers_gone routers=%d (a second look agrees)", len(served))
        self._held_loss = False

    def _count(self, report: CycleReport, what: str, n: int = 1) -> None:
        if n:
            report.changes[what] = report.changes.get(what, 0) + n
            CHANGES.labels(what).inc(n)

    def _apply(self, snap: Snapshot, report: CycleReport, looked_at: datetime | None = None) -> None:
        subnets = snap.router_subnets()
        subnet_router = snap.router_of_subnet()
        known = {row.router_id: row for row in queries.cloud_routers(self.db)}
        wanted: dict[str, Router] = {}
        taken = {name for name, gw in self.dataplane.gateways.items() if gw.cfg.router_id is None}
        for router in sorted(snap.routers.values(), key=lambda r: r.id):
            if router.external_address is None:
                continue
            name = router_gateway_name(router.id)
            if name in taken:  # a configured gateway's name, or 120 equal bits of two router ids
                log.error("event=router_name_clash router=%s gateway=%s (not served)", router.id, name)
                continue
            taken.add(name)
            wanted[router.id] = router

        # Routers: appear, change, vanish.
        for router in wanted.values():
            cfg = self._config(router_gateway_name(router.id), router.id, router.name, router.project_id,
                               str(router.external_address),
                               [str(s.cidr) for s in subnets.get(router.id, [])])
            row = known.get(router.id)
            if row is None or row.gone_at is not None or self._row_differs(row, cfg):
                back = row is not None and row.gone_at is not None
                core_cloud.save_router(self.db, cfg, router.revision)
                # Before the gateway is served again, so that its first sync has them.
                restored = core_cloud.router_back(self.forwards, cfg.name) if back else 0
                self._count(report, "forward_restored", restored)
                self._count(report, "router_added" if row is None or back else "router_changed")
                self._event("router_added" if row is None or back else "router_changed",
                            gateway=cfg.name, router_id=router.id, router_name=router.name,
                            project_id=router.project_id, external_address=cfg.external_address,
                            target_networks=",".join(cfg.target_networks), forwards_restored=restored)
            if self.dataplane.get(cfg.name) is None or self.dataplane.get(cfg.name).cfg != cfg:  # type: ignore
                self.dataplane.put_gateway(cfg)
        for router_id, row in known.items():
            if row.gone_at is None and router_id not in wanted:
                reason = (core_cloud.ROUTER_DELETED if router_id not in snap.routers
                          else core_cloud.ROUTER_UNPLUGGED)
                orphaned = core_cloud.router_gone(self.forwards, row.gateway, reason)
                self.dataplane.remove_gateway(row.gateway)
                self._count(report, "router_removed")
                self._count(report, "forward_orphaned", orphaned)
                self._event("router_removed", gateway=row.gateway, router_id=router_id, reason=reason,
                            forwards_orphaned=orphaned)
        ROUTERS.set(len(wanted))

        # Forwards on router gateways: follow their port, or get bound to one.
        served = {router_gateway_name(rid): rid for rid in wanted}
        # An address-only forward is bound to the port holding the address only if that port is the router's
        # project's: a VM of another project on a shared network is not this project's to follow.
        by_address: dict[tuple[str, ipaddress.IPv4Address], Port] = {}
        for port in snap.vm_ports():
            for subnet_id, ip in port.fixed_ips:
                rid = subnet_router.get(subnet_id)
                if rid is not None and rid in wanted and port.project_id == wanted[rid].project_id:
                    by_address.setdefault((rid, ip), port)
        changes: dict[str, CloudChange] = {}
        for fwd in queries.cloud_forwards(self.db, list(served)):
            router_id = served[fwd.gateway]
            change = changes.setdefault(fwd.gateway, CloudChange(looked_at=looked_at))
            if fwd.target_port_id is None:
                port = by_address.get((router_id, ipaddress.IPv4Address(fwd.target_address)))
                if port is not None:
                    change.bind[fwd.id] = (port.id, port.device_id or None)
                continue
            port = snap.ports.get(fwd.target_port_id)
            # Detached counts only for a port that had a VM: a port no VM ever held (a VIP, one made before its VM)
            # is followed like any other.
            if port is None or (not port.attached and fwd.target_server_id is not None):
                reason = "target port deleted" if port is None else "target VM deleted (the port's device_id cleared)"
                (change.orphan if self.cfg.on_target_deleted == "orphan" else change.remove)[fwd.id] = reason
                continue
            ip = snap.port_behind(port, router_id, subnet_router)
            if ip is None:
                # The port (and its VM) are still there: as for a router that goes, its forwards are kept, orphaned
                # (the interface may come back; the user's forward is never deleted for the cloud's rewiring).
                change.orphan[fwd.id] = "target port no longer on a network behind the router"
                continue
            if str(ip) != fwd.target_address:
                change.retarget[fwd.id] = str(ip)
            if (port.device_id or None) != fwd.target_server_id:
                change.bind[fwd.id] = (port.id, port.device_id or None)
        for gateway, change in changes.items():
            if change.empty:
                continue
            done = core_cloud.apply_changes(self.forwards, gateway, change)
            for what, n in done.items():
                self._count(report, what, n)

    # --- helpers ------------------------------------------------------------------------------------------------
    def _config(self, name: str, router_id: str, router_name: str, project_id: str, external: str | None,
                networks: list[str]) -> GatewayConfig:
        return GatewayConfig(name=name, netns=router_netns(router_id), external_address=external or "auto",
                             port_range=list(self.cfg.router_port_range), target_networks=networks,
                             # The router is its VMs' default gateway: replies come back through it, and the VM
                             # sees the client's address (as with a floating IP).
                             masquerade=False, router_id=router_id, router_name=router_name or None,
                             project_id=project_id or None)

    @staticmethod
    def _row_differs(row: Any, cfg: GatewayConfig) -> bool:
        return ((row.router_name or None) != cfg.router_name or row.external_address != cfg.external_address
                or list(row.target_networks) != cfg.target_networks or (row.project_id or None) != cfg.project_id
                or list(row.port_range) != cfg.port_range)

    def _event(self, action: str, **fields: Any) -> None:
        self.publisher.publish(Event.new("openstack", action=action, **fields))

    # --- TargetResolver: what core asks when a forward names a port, a server, or an address on a router -------
    def resolve(self, *, gateway: str | None, address: str | None, port_id: str | None, server: str | None,
                project: str | None) -> Resolved:
        """Find the router gateway, address and port of a create. InvalidInput says what does not fit."""
        try:
            if port_id is not None:
                port = self.cloud.port(port_id)
                if port is None:
                    raise InvalidInput(f"Neutron port {port_id} does not exist", field="target_port_id")
                return self._on_router(port, gateway, project, server_name=None, what="target_port_id")
            if server is not None:
                server_id, server_name = server, None
                if not _looks_like_uuid(server):
                    try:
                        found = self.cloud.server_by_name(server, project)
                    except NameNotUsable as exc:  # no Nova, or the name is ambiguous: the request's to fix
                        raise InvalidInput(str(exc), field="target_server") from None
                    if found is None:
                        raise InvalidInput(f"no server is called {server!r}", field="target_server")
                    server_id, server_name = found
                ports = self.cloud.server_ports(server_id)
                if not ports:
                    raise InvalidInput(f"server {server!r} has no port", field="target_server")
                candidates = []
                for port in ports:
                    try:
                        candidates.append(self._on_router(port, gateway, project, server_name=server_name,
                                                          what="target_server"))
                    except InvalidInput:
                        continue
                if not candidates:
                    raise InvalidInput(f"server {server!r} has no port on a network behind "
                                       + (f"gateway {gateway!r}" if gateway else "a router labgate serves"),
                                       field="target_server")
                if len({c.gateway for c in candidates}) > 1:
                    raise InvalidInput(f"server {server!r} has ports behind several routers: name the gateway",
                                       field="gateway")
                return candidates[0]
        except CloudError as exc:
            raise DataplaneUnavailable(f"the cloud cannot be read now: {exc}") from None
        # An address on a router gateway: bound to the port holding it (from the last look; no API call).
        assert gateway is not None and address is not None
        gw = self.dataplane.get(gateway)
        snap = self.snapshot
        if gw is None or gw.cfg.router_id is None:
            return Resolved(gateway=gateway, address=address)
        if snap is None:
            if project is not None:  # whose port holds the address is not known yet: a project token must wait
                raise DataplaneUnavailable("the cloud has not been read yet (whose address this is is not known)")
            return Resolved(gateway=gateway, address=address)
        subnet_router = snap.router_of_subnet()
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return Resolved(gateway=gateway, address=address)
        for port in snap.vm_ports():
            if ip in (a for _, a in port.fixed_ips) and snap.port_behind(port, gw.cfg.router_id, subnet_router) == ip:
                if project is not None and port.project_id != project:
                    raise InvalidInput(f"{address} belongs to a port of another project", field="target_address")
                return Resolved(gateway=gateway, address=address, port_id=port.id, server_id=port.device_id or None)
        return Resolved(gateway=gateway, address=address)

    def _on_router(self, port: Port, gateway: str | None, project: str | None, *, server_name: str | None,
                   what: str) -> Resolved:
        if project is not None and port.project_id != project:
            raise InvalidInput(f"port {port.id} belongs to another project", field=what)
        for attempt in range(2):
            snap = self.snapshot
            if snap is not None:
                subnet_router = snap.router_of_subnet()
                for subnet_id, ip in port.fixed_ips:
                    router_id = subnet_router.get(subnet_id)
                    if router_id is None:
                        continue
                    name = router_gateway_name(router_id)
                    if self.dataplane.get(name) is None or (gateway is not None and gateway != name):
                        continue
                    return Resolved(gateway=name, address=str(ip), port_id=port.id,
                                    server_id=port.device_id or None, server_name=server_name)
            if attempt == 0:
                if not self.cloud.routed(sid for sid, _ip in port.fixed_ips):
                    break  # behind no router at all: not worth a whole look (one per such request)
                report = self.cycle()  # a port on a subnet the last look did not know yet: look again, once
                if self.snapshot is snap:  # that look failed: nothing is known about the port's subnet
                    raise DataplaneUnavailable(f"the cloud cannot be read now: {report.error}")
        where = f"gateway {gateway!r}" if gateway else "a router labgate serves"
        raise InvalidInput(f"port {port.id} has no fixed IP on a network behind {where}", field=what)


def _looks_like_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
        return True
    except ValueError:
        return False
