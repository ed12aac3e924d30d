"""The assembled service: settings, database, dataplane and the domain services, started and stopped together."""

from __future__ import annotations

import logging

from labgate.config import Settings
from labgate.core.forwards import ForwardService
from labgate.dataplane.reconcile import Dataplane
from labgate.db.migrate import upgrade
from labgate.db.session import Database

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
        self.forwards = ForwardService(settings, self.db, self.dataplane)
        self.started = False

    def start(self) -> None:
        upgrade(self.db.engine)
        # Restore the kernel from the database before serving: a restart brings back exactly the committed rules.
        if not self.dataplane.reconcile_once():
            for gw in self.dataplane.gateways.values():
                if gw.last_error:
                    log.error("event=gateway_not_ready gateway=%s error=%r (retrying in the background)",
                              gw.cfg.name, gw.last_error)
        self.dataplane.start()
        self.started = True

    def stop(self) -> None:
        self.dataplane.stop()
        self.db.dispose()
        self.started = False
