"""The agent role: the process that programs a gateway's kernel follows the database for changes other processes
commit (API replicas, `labgate serve --no-agent`), applies them, and says so (docs/operations.md, Cluster).

Every process with a dataplane runs one `AgentLoop` (`labgate agent`, and `labgate serve` in one process, where most
changes are applied by the request itself and the loop only catches the others'). Each turn of the loop:

- heartbeats (`agents`: name, host, gateways), every `agent_interval` seconds;
- finds its gateways whose generation is ahead of what was applied, renders each whole from the database (one
  atomic nft batch, as the drift repair does), and records the generation it read before rendering as applied, or
  the kernel's error;
- waits for a NOTIFY on `labgate_changes` (PostgreSQL) or `agent_poll_interval` seconds, whichever comes first.

A clean stop marks the agent stopped; its kernel rules stay in place (a stopped labgate never flushes them).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

from labgate.db import cluster

if TYPE_CHECKING:
    from labgate.service import Labgate

log = logging.getLogger("labgate.agent")

APPLIED = Counter("labgate_agent_applies_total", "Gateway generations an agent applied", ["gateway", "outcome"])
HEARTBEAT = Gauge("labgate_agent_heartbeat_timestamp_seconds", "When this agent last wrote its heartbeat")
BEHIND = Gauge("labgate_agent_generations_behind", "Generations committed but not yet applied", ["gateway"])


def default_name() -> str:
    return socket.gethostname() or "agent"


class AgentLoop:
    def __init__(self, lg: "Labgate", name: str | None = None) -> None:
        self.lg = lg
        self.db = lg.db
        self.name = name or lg.settings.server.agent_name or default_name()
        self.interval = lg.settings.server.agent_interval
        self.poll = min(lg.settings.server.agent_poll_interval, self.interval)
        self.started_at = datetime.now(timezone.utc)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener = cluster.Listener(self.db)
        self._last_beat = 0.0
        self.turns = 0

    @property
    def gateways(self) -> list[str]:
        return sorted(name for name, gw in self.lg.dataplane.gateways.items() if gw.kernel is not None)

    # --- one turn ------------------------------------------------------------------------------------------------
    def beat(self) -> None:
        cluster.heartbeat(self.db, self.name, host=socket.gethostname(), pid=os.getpid(), version=_version(),
                          gateways=self.gateways, interval=self.interval, started_at=self.started_at)
        self._last_beat = time.monotonic()
        HEARTBEAT.set(time.time())

    def claim(self, generations: dict[str, int]) -> None:
        """At start, after the first reconcile rendered each gateway from the committed state: record the
        generations read before it (`generations`) as applied, or the gateway's error."""
        for name, generation in generations.items():
            gw = self.lg.dataplane.get(name)
            if gw is None or gw.kernel is None:
                continue
            if gw.needs_full or gw.last_error:
                cluster.record_error(self.db, name, generation, self.name, gw.last_error or "not synced yet")
            else:
                ext = str(gw.external_address) if gw.external_address else None
                cluster.record_applied(self.db, name, generation, self.name, ext)

    def apply(self, name: str, generation: int) -> bool:
        """Render gateway `name` from the committed state (which includes `generation`); record the outcome."""
        gw = self.lg.dataplane.get(name)
        if gw is None or gw.kernel is None:
            return False
        gw.needs_full = True
        ok = self.lg.dataplane.reconcile_gateway(gw) and not gw.needs_full
        if ok:
            ext = str(gw.external_address) if gw.external_address else None
            cluster.record_applied(self.db, name, generation, self.name, ext)
            APPLIED.labels(name, "ok").inc()
            log.info("event=agent_applied gateway=%s generation=%d", name, generation)
        else:
            cluster.record_error(self.db, name, generation, self.name, gw.last_error or "the kernel sync failed")
            APPLIED.labels(name, "failed").inc()
        return ok

    def turn(self) -> dict[str, int]:
        """Heartbeat when due; apply every gateway that is behind. Returns the generations applied (or tried)."""
        before = set(self.gateways)
        self.lg.follow_routers()
        if time.monotonic() - self._last_beat >= self.interval or set(self.gateways) != before:
            self.beat()
        behind = cluster.states_behind(self.db, self.gateways)
        for name in set(self.gateways) - before:  # a router whose namespace came to this host: render it now
            behind.setdefault(name, cluster.generation_of(self.db, name))
        for name in self.gateways:
            BEHIND.labels(name).set(0)
        for name, generation in sorted(behind.items()):
            BEHIND.labels(name).set(1)
            self.apply(name, generation)
        self.turns += 1
        return behind

    # --- the loop ------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.turn()
            except Exception:  # noqa: BLE001 - the database may be briefly away: try again next turn
                log.exception("event=agent_turn_failed")
            self._listener.wait(self.poll, self._stop)

    def start(self) -> None:
        self.beat()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="agent", daemon=True)
        self._thread.start()
        log.info("event=agent_started name=%s gateways=%s", self.name, ",".join(self.gateways) or "-")

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        try:
            cluster.notify(self.db, "")  # wake the LISTEN it may be waiting in (anyone else: one extra look)
        except Exception:  # noqa: BLE001 - then it ends within agent_poll_interval
            pass
        if self._thread is not None:
            self._thread.join(timeout)
        self._listener.close()
        try:
            cluster.agent_stopped(self.db, self.name)
        except Exception:  # noqa: BLE001 - the database may be gone at shutdown; the heartbeat then ages out
            log.warning("event=agent_stop_not_recorded name=%s", self.name)


def _version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version("labgate")
    except Exception:  # noqa: BLE001
        return ""
