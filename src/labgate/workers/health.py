"""Reachability of what forwards point at ("bad records"): every cycle, from inside each gateway's namespace,
ICMP echo to every distinct target address and a TCP connect to every enabled TCP forward's target port.

States are up / down / unknown with a threshold: `down_after` consecutive failed cycles make a target down, one
answer makes it up again, so one lost probe does not flap. A probe the gateway could not even send (inconclusive)
changes nothing. Each change of an address's state is a "health" event, one per owner whose forwards use it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timezone
from typing import Callable, Iterable

from prometheus_client import Counter, Gauge

from labgate.config import GatewayConfig, Settings
from labgate.dataplane.netns import NamespaceError
from labgate.db import queries
from labgate.db.models import AddressHealth, ForwardState
from labgate.db.session import Database
from labgate.events import Event, Publisher
from labgate.workers.probe import NamespaceProbe, probe_in_namespace

log = logging.getLogger("labgate.health")
PORT_DOWN_STATES = ("refused", "timeout", "unreachable")
PROBES = Counter("labgate_probes_total", "Reachability probes by kind (icmp, tcp) and result (up, down, "
                 "inconclusive)", ["gateway", "kind", "result"])
PROBE_FAILURES = Counter("labgate_probe_cycle_failures_total", "Gateways a health cycle could not probe at all",
                         ["gateway"])
CYCLE_SECONDS = Gauge("labgate_probe_cycle_seconds", "Duration of the last health cycle (all gateways)")


class HealthMonitor:
    def __init__(self, settings: Settings, db: Database, bus: Publisher | None = None, *, down_after: int = 2,
                 timeout: float = 1.0, attempts: int = 2,
                 gateways: Callable[[], Iterable[GatewayConfig]] | None = None) -> None:
        self.settings = settings
        # The gateways to probe, asked each cycle (OpenStack routers come and go); default: the configured ones.
        self.gateways = gateways or (lambda: settings.gateway)
        self.db = db
        self.bus = bus
        self.down_after = down_after
        self.timeout = timeout
        self.attempts = attempts
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
                probe = probe_in_namespace(gw.netns, addresses, tcp, timeout=self.timeout, attempts=self.attempts)
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
        for result in probe.icmp.values():
            PROBES.labels(gateway, "icmp", "inconclusive" if result.inconclusive else
                          "up" if result.alive else "down").inc()
        for result in probe.tcp.values():
            PROBES.labels(gateway, "tcp", "up" if result.state == "open" else
                          "down" if result.state in PORT_DOWN_STATES else "inconclusive").inc()

    def _record(self, gateway: str, rows: list, probe: NamespaceProbe) -> None:
        now = datetime.now(timezone.utc)
        owners: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for r in rows:
            owners[r.target_address][r.owner].add(r.name or "")
        changes: list[tuple[str, str, str, float | None]] = []
        with self.db.writer() as s:
            known = queries.address_health_rows(s, gateway)
            for address, result in probe.icmp.items():
                h = known.pop(address, None)
                if h is None:
                    h = AddressHealth(gateway=gateway, address=address, state="unknown", failures=0)
                    s.add(h)
                h.last_checked_at = now
                if result.inconclusive:
                    continue
                previous = h.state
                if result.alive:
                    h.failures = 0
                    h.rtt_ms = result.rtt_ms
                    h.last_seen_at = now
                    h.state = "up"
                else:
                    h.failures = (h.failures or 0) + 1
                    h.rtt_ms = None
                    if h.failures >= self.down_after:
                        h.state = "down"
                if h.state != previous:
                    h.changed_at = now
                    changes.append((address, h.state, previous, h.rtt_ms))
            for stale in known.values():  # no forward points there any more
                s.delete(stale)
            self._record_ports(s, rows, probe, now)
            s.commit()
        for address, state, previous, rtt in changes:
            log.info("event=health_changed gateway=%s address=%s state=%s previous=%s", gateway, address, state,
                     previous)
            if self.bus is None:
                continue
            for owner, names in owners[address].items():
                self.bus.publish(Event.new("health", gateway=gateway, address=address, state=state,
                                           previous=previous, rtt_ms=rtt, owner=owner,
                                           names=",".join(sorted(n for n in names if n))))

    def _record_ports(self, s, rows: list, probe: NamespaceProbe, now: datetime) -> None:
        by_target: dict[tuple[str, int], list[int]] = defaultdict(list)
        for r in rows:
            if r.protocol == "tcp" and r.enabled:
                by_target[(r.target_address, r.target_port)].append(r.id)
        ids = [i for group in by_target.values() for i in group]
        states = queries.forward_states_by_id(s, ids)
        for target, result in probe.tcp.items():
            for fid in by_target.get(target, []):
                st = states.get(fid)
                if st is None:
                    st = ForwardState(forward_id=fid, port_state="unknown", port_failures=0, connections=0,
                                      packets=0, bytes=0, raw_connections=0, raw_packets=0, raw_bytes=0)
                    s.add(st)
                st.port_checked_at = now
                if result.state == "open":
                    st.port_failures = 0
                    st.port_state = "open"
                elif result.state in PORT_DOWN_STATES:
                    st.port_failures = (st.port_failures or 0) + 1
                    if st.port_failures >= self.down_after:
                        st.port_state = result.state
