"""Reachability of what forwards point at ("bad records"): every cycle, from inside each gateway's namespace,
ICMP echo to every distinct target address and a TCP connect to every enabled TCP forward's target port.

States are up / down / unknown with a threshold: `down_after` consecutive failed cycles make a target down, one
answer makes it up again, so one lost probe does not flap. A probe the gateway could not even send (inconclusive)
changes nothing. Each change of an address's state is a "health" event, one per owner whose forwards use it.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally, defaultdict
from datetime import datetime, timezone
from typing import Callable, Iterable

from prometheus_client import Counter, Gauge

from labgate.config import GatewayConfig, Settings
from labgate.dataplane.netns import NamespaceError
from labgate.db import health_states, queries
from labgate.db.session import Database
from labgate.events import Event, Publisher
from labgate.workers.probe import DEFAULT_CONCURRENCY, DEFAULT_RATE, NamespaceProbe, probe_in_namespace

log = logging.getLogger("labgate.health")
PORT_DOWN_STATES = ("refused", "timeout", "unreachable")
PROBES = Counter("labgate_probes_total", "Reachability probes by kind (icmp, tcp) and result (up, down, "
                 "inconclusive)", ["gateway", "kind", "result"])
PROBE_FAILURES = Counter("labgate_probe_cycle_failures_total", "Gateways a health cycle could not probe at all",
                         ["gateway"])
CYCLE_SECONDS = Gauge("labgate_probe_cycle_seconds", "Duration of the last health cycle (all gateways)")


class HealthMonitor:
    """Probes every gateway's targets each cycle and records their states.

    The defaults, for a real lab: `timeout` 1 s per ICMP request and TCP connect (a lab machine answers within
    milliseconds; a second is generous for a loaded one), `attempts` 2 ICMP requests before an address counts as
    silent, `down_after` 2 silent cycles before it is down.  `rate` (ICMP requests/s) and `concurrency` (TCP
    connects in flight) set how long a large cycle takes: silence costs a timeout per target, so every silent
    target's wait has to overlap the others'.  20,000 requests/s (about 10 Mbit/s of 64-byte packets) and 10,000
    connects in flight (each a descriptor, and never more than the process can spare: see `tcp_probe`) take a
    cycle over 50,000 addresses, half of them silent, in a few seconds (bench/background.py) instead of the 16 s
    that 5,000 requests/s and 1,000 connects (the old defaults) needed for the ICMP part alone and 26 s for TCP.
    """

    def __init__(self, settings: Settings, db: Database, bus: Publisher | None = None, *, down_after: int = 2,
                 timeout: float = 1.0, attempts: int = 2, rate: int = DEFAULT_RATE,
                 concurrency: int = DEFAULT_CONCURRENCY,
                 gateways: Callable[[], Iterable[GatewayConfig]] | None = None) -> None:
        self.settings = settings
        # The gateways to probe, asked each cycle (OpenStack routers come and go); default: the configured ones.
        self.gateways = gateways or (lambda: settings.gateway)
        self.db = db
        self.bus = bus
        self.down_after = down_after
        self.timeout = timeout
        self.attempts = attempts
        self.rate = rate
        self.concurrency = concurrency
        self.last_cycle_seconds: float | None = None

    def check_once(self) -> dict[str, NamespaceProbe]:
        """One cycle over every gateway; returns what was probed (for tests and the benchmark)."""
        results: dict[str, NamespaceProbe] = {}
        total = 0.0
        for gw in list(self.gateways()):
            with self.db.reader() as s:
                rows = queries.probe_targets(s, gw.name)
            if not rows:
                with self.db.writer() as s:
                    queries.delete_gateway_health(s, gw.name)
                    s.commit()
                continue
            addresses = sorted({r.target_address for r in rows})
            tcp = sorted({(r.target_address, r.target_port) for r in rows if r.protocol == "tcp" and r.enabled})
            try:
                probe = probe_in_namespace(gw.netns, addresses, tcp, timeout=self.timeout, attempts=self.attempts,
                                           rate=self.rate, concurrency=self.concurrency)
            except (NamespaceError, PermissionError, OSError) as exc:
                log.warning("event=health_probe_failed gateway=%s error=%r", gw.name, str(exc))
                PROBE_FAILURES.labels(gw.name).inc()
                continue
            total += probe.seconds
            results[gw.name] = probe
            self._record(gw.name, rows, probe)
            self._count(gw.name, probe)
        self.last_cycle_seconds = total
        CYCLE_SECONDS.set(total)
        return results

    @staticmethod
    def _count(gateway: str, probe: NamespaceProbe) -> None:
        counts: Tally[tuple[str, str]] = Tally()
        for result in probe.icmp.values():
            counts["icmp", "inconclusive" if result.inconclusive else "up" if result.alive else "down"] += 1
        for result in probe.tcp.values():
            counts["tcp", "up" if result.state == "open" else
                   "down" if result.state in PORT_DOWN_STATES else "inconclusive"] += 1
        for (kind, outcome), count in counts.items():
            PROBES.labels(gateway, kind, outcome).inc(count)

    def _record(self, gateway: str, rows: list, probe: NamespaceProbe) -> None:
        """Fold one cycle's results into address_health and forward_state: read the states without the write lock,
        decide, then write them in one short transaction (an executemany per kind of change, not ORM objects)."""
        now = datetime.now(timezone.utc)
        with self.db.reader() as s:
            known = health_states.address_states(s, gateway)
            ports = health_states.port_states(s, gateway)
        new: list[dict] = []
        changed: list[dict] = []
        changes: list[tuple[str, str, str, float | None]] = []
        for address, result in probe.icmp.items():
            entry = known.pop(address, None)
            previous, failures, rtt = entry or ("unknown", 0, None)
            row: dict = {"address": address, "last_checked_at": now}
            state = previous
            if result.inconclusive:
                pass
            elif result.alive:
                state, failures, rtt = "up", 0, result.rtt_ms
                row.update(state=state, failures=0, rtt_ms=rtt, last_seen_at=now)
            else:
                failures, rtt = failures + 1, None
                if failures >= self.down_after:
                    state = "down"
                row.update(state=state, failures=failures, rtt_ms=None)
            if state != previous:
                row["changed_at"] = now
                changes.append((address, state, previous, rtt))
            if entry is None:
                new.append({"address": address, "state": state, "failures": failures, "rtt_ms": rtt,
                            "last_seen_at": row.get("last_seen_at"), "last_checked_at": now,
                            "changed_at": row.get("changed_at")})
            else:
                changed.append(row)
        port_rows, missing = self._port_rows(rows, probe, ports, now)
        with self.db.writer() as s:
            # Addresses left in `known`: no forward points there any more.
            health_states.write_address_states(s, gateway, new, changed, known)
            health_states.write_port_states(s, missing, port_rows, now)
            s.commit()
        owners: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        if changes and self.bus is not None:
            with self.db.reader() as s:
                for address, owner, name in queries.forward_owners(s, gateway, sorted({c[0] for c in changes})):
                    owners[address][owner].add(name or "")
        for address, state, previous, rtt in changes:
            log.info("event=health_changed gateway=%s address=%s state=%s previous=%s", gateway, address, state,
                     previous)
            if self.bus is None:
                continue
            for owner, names in owners[address].items():
                self.bus.publish(Event.new("health", gateway=gateway, address=address, state=state,
                                           previous=previous, rtt_ms=rtt, owner=owner,
                                           names=",".join(sorted(n for n in names if n))))

    def _port_rows(self, rows: list, probe: NamespaceProbe, ports: dict[int, tuple[str, int]],
                   now: datetime) -> tuple[list[tuple[int, str, int]], list[int]]:
        """The forward_state port columns to write after a cycle, and the forwards that have no forward_state row
        yet.  A probe that could not be made ("error") changes nothing but port_checked_at."""
        by_target: dict[tuple[str, int], list[int]] = defaultdict(list)
        for r in rows:
            if r.protocol == "tcp" and r.enabled:
                by_target[(r.target_address, r.target_port)].append(r.id)
        out: list[tuple[int, str, int]] = []
        missing: list[int] = []
        for target, result in probe.tcp.items():
            for fid in by_target.get(target, ()):
                entry = ports.get(fid)
                if entry is None:
                    missing.append(fid)
                state, failures = entry or ("unknown", 0)
                if result.state == "open":
                    state, failures = "open", 0
                elif result.state in PORT_DOWN_STATES:
                    failures += 1
                    if failures >= self.down_after:
                        state = result.state
                out.append((fid, state, failures))
        return out, missing
