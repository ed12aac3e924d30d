"""The assembled service: settings, database, dataplane and the domain services, started and stopped together."""

from __future__ import annotations

import logging

from labgate.config import Settings
from labgate.core.forwards import ForwardService
from labgate.dataplane.reconcile import Dataplane
from labgate.db.migrate import upgrade
from labgate.db.session import Database
from labgate.workers.connections import ConnectionWatcher
from labgate.workers.ddns import DdnsUpdater
from labgate.workers.events import EventBus
from labgate.workers.health import HealthMonitor
from labgate.workers.periodic import Periodic
from labgate.workers.usage import UsageCollector

log = logging.getLogger("labgate")


class Labgate:
    """One labgate process's state. `start()` migrates, restores the kernel from the database, starts the loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.server.database)
        self.dataplane = Dataplane(
            settings.gateway,
            load_rules=lambda gw: self.forwards.enabled_rules(gw),
            kernel=settings.server.dataplane == "nft",
            interval=settings.server.reconcile_interval,
            full_interval=settings.server.full_resync_interval,
        )
        self.bus = EventBus(self._sinks())
        self.forwards = ForwardService(settings, self.db, self.dataplane, bus=self.bus)
        self.usage = UsageCollector(self.db, self.dataplane)
        self.health = HealthMonitor(settings, self.db, self.bus)
        # Dynamic DNS ([ddns], docs/ddns.md): only when configured; it needs no kernel dataplane.
        self.ddns = DdnsUpdater(settings, self.db, self.dataplane, self.bus) if settings.ddns is not None else None
        self.workers: list = []
        self.started = False

    def _sinks(self) -> list:
        from labgate.workers.sinks import build_sinks

        return build_sinks(self.settings.sink)

    def start(self) -> None:
        upgrade(self.db.engine)
        # Restore the kernel from the database before serving: a restart brings back exactly the committed rules.
        if not self.dataplane.reconcile_once():
            for gw in self.dataplane.gateways.values():
                if gw.last_error:
                    log.error("event=gateway_not_ready gateway=%s error=%r (retrying in the background)",
                              gw.cfg.name, gw.last_error)
        self.dataplane.start()
        self.bus.start()
        if self.dataplane_enabled:
            self.workers.append(Periodic("usage", self.settings.server.usage_interval, self.usage.collect_once))
            self.workers.append(Periodic("health", self.settings.server.health_interval, self.health.check_once))
            for gw in self.settings.gateway:
                gwdp = self.dataplane.gateways[gw.name]
                self.workers.append(ConnectionWatcher(
                    gw.name, gw.netns, self.bus, self.forwards.event_fields,
                    report=lambda message, gwdp=gwdp: gwdp.set_problem(
                        "connection_events", message, "install conntrack (Debian: apt-get install conntrack) and run "
                        "labgate with CAP_NET_ADMIN in the gateway's namespace")))
        if self.ddns is not None:
            self.workers.append(self.ddns)
        for worker in self.workers:
            worker.start()
        self.started = True

    @property
    def dataplane_enabled(self) -> bool:
        return self.settings.server.dataplane == "nft"

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()
        self.dataplane.stop()
        self.bus.stop(timeout=5)
        self.db.dispose()
        self.started = False
