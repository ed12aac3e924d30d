"""The assembly of a running labgate: settings, database, dataplane, the domain services and the background
workers, wired together here (and only here), started and stopped together.

Layers (docs/design.md): api -> core -> (db, dataplane); workers beside core, fed through interfaces (core
publishes events to a Publisher; workers read the database and the dataplane); config and events at the bottom.
This module is the top: it is the only one that knows every layer.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any, Callable

from labgate.agent import AgentLoop
from labgate.config import GatewayConfig, Settings
from labgate.core.forwards import ForwardService
from labgate.core.rules import CommittedRules
from labgate.dataplane.kernel import NamespaceKernel, release_memory
from labgate.dataplane.reconcile import Dataplane, KernelFactory
from labgate.db import cluster
from labgate.db.cluster import SingletonLock
from labgate.db.migrate import upgrade
from labgate.db.queries import forward_labels
from labgate.db.session import Database
from labgate.events import Event
from labgate.periodic import Periodic
from labgate.workers.connections import ConnectionWatcher
from labgate.workers.ddns import DdnsUpdater
from labgate.workers.events import EventBus
from labgate.workers.health import HealthMonitor
from labgate.workers.sinks import build_sinks
from labgate.workers.usage import UsageCollector

log = logging.getLogger("labgate")

CONNTRACK_FIX = "install conntrack (Debian: apt-get install conntrack) and run labgate with CAP_NET_ADMIN in the " \
                "gateway's namespace"


def namespace_kernels(cfg: GatewayConfig) -> NamespaceKernel:
    return NamespaceKernel(cfg.netns)


class ForwardLabels:
    """gateway/owner/name of a forward for connection events, cached (ids are never reused) and forgotten when a
    forward event says it changed. Also the Publisher core is handed: it passes every event on to the bus."""

    def __init__(self, db: Database, bus: EventBus) -> None:
        self.db = db
        self.bus = bus
        self._cache: dict[int, dict[str, Any]] = {}

    def publish(self, event: Event) -> Event | None:
        if event.kind == "forward" and isinstance(event.fields.get("forward_id"), int):
            self._cache.pop(event.fields["forward_id"], None)  # type: ignore[arg-type]
        return self.bus.publish(event)

    def lookup(self, forward_id: int) -> dict[str, Any] | None:
        cached = self._cache.get(forward_id)
        if cached is None:
            labels = forward_labels(self.db, forward_id)
            if labels is None:
                return None
            if len(self._cache) > 100_000:
                self._cache.clear()
            cached = self._cache[forward_id] = {"gateway": labels.gateway, "owner": labels.owner,
                                                "name": labels.name}
        return cached


class Labgate:
    """One labgate process's state. `start()` migrates, restores the kernel from the database, starts the loops.

    `kernels` chooses the kernel of each gateway: by default the real namespace (dataplane = "nft") or none
    (dataplane = "none": API only); tests pass the in-memory fake (labgate.dataplane.fake.FakeKernel)."""

    def __init__(self, settings: Settings, *, kernels: KernelFactory | None = None,
                 agent_name: str | None = None, agent_only: bool = False) -> None:
        self.settings = settings
        self.agent_name = agent_name
        # `labgate agent`: the kernels of this host's gateways and their per-gateway work, none of the cluster-wide
        # work (that runs on an API replica); OpenStack routers are those whose namespace is on this host.
        self.agent_only = agent_only
        self.db = Database(settings.server.database)
        self.bus = EventBus(build_sinks(settings.sink))
        self.labels = ForwardLabels(self.db, self.bus)
        if kernels is None and settings.server.dataplane == "nft":
            kernels = namespace_kernels
        self.dataplane = Dataplane(settings.gateway, CommittedRules(self.db), kernels=kernels,
                                   interval=settings.server.reconcile_interval,
                                   full_interval=settings.server.full_resync_interval)
        self.forwards = ForwardService(settings, self.db, self.dataplane, publisher=self.labels)
        self.usage = UsageCollector(self.db, self.dataplane)
        self.health = HealthMonitor(settings, self.db, self.bus,
                                    gateways=lambda: [gw.cfg for gw in self.dataplane.gateways.values()])
        # Dynamic DNS ([ddns], docs/ddns.md): only when configured; it needs no kernel dataplane.
        self.ddns = DdnsUpdater(settings, self.db, self.dataplane, self.bus) if settings.ddns is not None else None
        # OpenStack ([openstack], docs/openstack.md): routers as gateways, forwards that follow their port.
        self.openstack: Any = None
        if settings.openstack is not None:
            from labgate.openstack.monitor import OpenStackMonitor  # noqa: PLC0415 - optional extra

            self.openstack = OpenStackMonitor(settings.openstack, self.db, self.dataplane, self.forwards,
                                              self.labels)
            self.forwards.targets = self.openstack
        self.workers: list = []
        self._cycles = threading.Lock()  # usage and health cycles, one at a time (see _one_at_a_time)
        # Work that runs once in a cluster (dynamic DNS, the OpenStack monitor): on the holder of a PostgreSQL
        # advisory lock; on SQLite, here.
        self.singletons: list = []
        self.singleton_lock = SingletonLock(self.db, "singletons")
        self.leader = False
        self.agent: AgentLoop | None = None
        self._watchers: dict[str, ConnectionWatcher] = {}
        self.dataplane.on_gateway(self._gateway_changed)
        self.started = False

    @property
    def dataplane_enabled(self) -> bool:
        return self.openstack is not None or any(gw.kernel is not None for gw in self.dataplane.gateways.values())

    @property
    def watchers(self) -> dict[str, ConnectionWatcher]:
        """The running connection-event watcher of each gateway, by gateway name."""
        return dict(self._watchers)

    @property
    def watches_connections(self) -> bool:
        return self.settings.server.dataplane == "nft" and self.dataplane_enabled

    def _watch(self, gwdp: Any) -> None:
        """Start the connection-event watcher of one gateway (each gateway namespace has its own conntrack)."""
        watcher = ConnectionWatcher(
            gwdp.cfg.name, gwdp.cfg.netns, self.bus, self.labels.lookup,
            report=lambda message: gwdp.set_problem("connection_events", message, CONNTRACK_FIX))
        self._watchers[gwdp.cfg.name] = watcher
        watcher.start()

    def _gateway_changed(self, what: str, gwdp: Any) -> None:
        """A gateway came or went at run time (an OpenStack router): its per-gateway workers follow."""
        if not (self.started and self.watches_connections):
            return
        if what == "added" and gwdp.cfg.name not in self._watchers:
            self._watch(gwdp)
        elif what == "removed":
            watcher = self._watchers.pop(gwdp.cfg.name, None)
            if watcher is not None:
                watcher.stop()

    def start(self) -> None:
        upgrade(self.db.engine)
        if self.openstack is not None:
            # The routers the database remembers are served at once, before (and without) the cloud answering.
            if self.agent_only:
                self.openstack.follow(local_only=True)
            else:
                self.openstack.restore()
        # What the kernel is about to be rendered from: recorded as applied once it is (AgentLoop.claim).
        generations = {name: cluster.generation_of(self.db, name) for name, gw in self.dataplane.gateways.items()
                       if gw.kernel is not None}
        # Restore the kernel from the database before serving: a restart brings back exactly the committed rules.
        if not self.dataplane.reconcile_once():
            for gw in self.dataplane.gateways.values():
                if gw.last_error:
                    log.error("event=gateway_not_ready gateway=%s error=%r (retrying in the background)",
                              gw.cfg.name, gw.last_error)
        self.dataplane.start()
        self.bus.start()
        # The database's health: a real write every reconcile_interval (every second while it fails), shown on
        # every gateway (GET /api/v1/gateways, `labgate gateway ls`) and in /healthz.
        database = Periodic("database", lambda: 1.0 if self.db.problem else self.settings.server.reconcile_interval,
                            self.check_database)
        self.db.on_failure = database.trigger  # a request failed on the database: probe it now
        self.workers.append(database)
        if self.watches_connections:
            self.workers.append(Periodic("usage", self.settings.server.usage_interval,
                                         lambda: self._one_at_a_time(self.usage.collect_once)))
            self.workers.append(Periodic("health", self.settings.server.health_interval,
                                         lambda: self._one_at_a_time(self.health.check_once)))
        if self.ddns is not None and not self.agent_only:
            self.singletons.append(self.ddns)
        if self.openstack is not None and not self.agent_only:
            self.singletons.append(self.openstack)
        if not self.agent_only:  # API processes elect the one that runs the cluster-wide work (if any)
            self.workers.append(Periodic("singletons", self.settings.server.agent_interval, self.elect))
        if self.dataplane.kernels is not None:  # this process programs kernels: it is their agent
            self.agent = AgentLoop(self, self.agent_name)
        self.started = True
        if self.watches_connections:
            for gwdp in list(self.dataplane.gateways.values()):
                self._watch(gwdp)
        if self.agent is not None:
            self.agent.beat()
            self.agent.claim(generations)
            self.agent.start()
        for worker in self.workers:
            worker.start()

    def elect(self) -> None:
        """One round of the singleton election: start the singleton work when this process takes the lock, stop it
        when it loses it (the database unreachable: another process may hold it now)."""
        self.leader = cluster.elect(self.singleton_lock, self._lead, self.leader)
        if not self.leader and self.openstack is not None:
            # Another replica runs the monitor: serve the routers it records, without a kernel of our own.
            self.openstack.follow()
        self._learn_remote_addresses()

    def _learn_remote_addresses(self) -> None:
        """Gateways another process programs, with external_address = "auto": the address their agent found (for
        dynamic DNS and the forwards' views here)."""
        remote = {name: gw for name, gw in self.dataplane.gateways.items()
                  if gw.kernel is None and gw.cfg.external_address == "auto"}
        if not remote:
            return
        with self.db.reader() as s:
            for name, sync in cluster.gateway_syncs(s, remote).items():
                if sync.external_address:
                    remote[name].external_address = ipaddress.IPv4Address(sync.external_address)

    def follow_routers(self) -> None:
        """An agent's turn: serve the OpenStack routers whose namespace is on this host (none without OpenStack)."""
        if self.openstack is not None and self.agent_only:
            self.openstack.follow(local_only=True)

    def _lead(self, held: bool) -> None:
        for worker in self.singletons:
            (worker.start if held else worker.stop)()

    def check_database(self) -> None:
        problem = self.db.probe()
        for gw in self.dataplane.gateways.values():
            gw.set_problem("database", problem, "make the database file writable again (its permissions, its "
                           "disk's free space, the file itself): labgate notices within seconds" if problem else "")

    def _one_at_a_time(self, cycle: Callable[[], object]) -> object:
        """Run one usage or health cycle, never both at once, then give freed heap back to the system. At 50,000
        forwards each holds ~25 MiB of rows and results while it runs; both starting together (at every start)
        made the server's peak their sum, and what glibc kept afterwards stayed in RSS."""
        with self._cycles:
            try:
                return cycle()
            finally:
                release_memory()

    def stop(self) -> None:
        self.started = False
        if self.agent is not None:
            self.agent.stop()
            self.agent = None
        for worker in [*self.workers, *self._watchers.values()]:
            worker.stop()
        if self.leader:
            for worker in self.singletons:
                worker.stop()
            self.leader = False
        self.singleton_lock.release()
        self.workers.clear()
        self.singletons.clear()
        self._watchers.clear()
        self.dataplane.stop()
        self.bus.stop(timeout=5)
        self.db.dispose()
