"""How a health cycle's results are recorded (workers/health.py with db/health_states.py), without a kernel: the
probe is replaced by canned results, the database is the test database (SQLite, or PostgreSQL with
LG_TEST_DATABASE=postgresql). The probes themselves are tested against real namespaces in tests/kernel."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import delete, insert, select

from labgate.config import GatewayConfig
from labgate.db import queries
from labgate.db.migrate import upgrade
from labgate.db.models import AddressHealth, Forward, ForwardState
from labgate.db.session import Database
from labgate.workers import health as health_module
from labgate.workers.health import HealthMonitor
from labgate.workers.probe import IcmpResult, NamespaceProbe, TcpResult
from tests.conftest import make_settings

GW = "lab"
UP, SILENT, SHAKY = "10.9.0.5", "10.9.0.77", "10.9.0.8"


class Bus:
    def __init__(self) -> None:
        self.events = []

    def publish(self, event):
        self.events.append(event)


@pytest.fixture
def db(database_url):
    database = Database(database_url)
    upgrade(database.engine)
    now = datetime.now(timezone.utc)
    forwards = [(1, UP, 22, "alice", "vm1"), (2, UP, 2222, "alice", "vm1"), (3, SILENT, 22, "bob", "ghost"),
                (4, SHAKY, 22, "bob", None)]
    with database.engine.begin() as conn:
        conn.execute(insert(Forward.__table__), [
            {"id": i, "gateway": GW, "protocol": "tcp", "external_port": 4000 + i, "port_count": 1,
             "target_address": a, "target_port": p, "name": name, "kind": None, "owner": owner, "description": "",
             "enabled": True, "allowed_sources": [], "created_at": now, "updated_at": now}
            for i, a, p, owner, name in forwards])
        # Forward 1 already has usage: recording its port must not touch it.
        conn.execute(insert(ForwardState.__table__), [
            {"forward_id": 1, "port_state": "unknown", "port_failures": 0, "connections": 5, "packets": 50,
             "bytes": 500, "raw_connections": 5, "raw_packets": 50, "raw_bytes": 500}])
    yield database
    database.dispose()


def cycle(up=True, silent_tcp="timeout", shaky_inconclusive=True) -> NamespaceProbe:
    icmp = {UP: IcmpResult(UP, up, 0.25 if up else None, None if up else "timeout"),
            SILENT: IcmpResult(SILENT, False, None, "timeout"),
            SHAKY: IcmpResult(SHAKY, False, None, "send failed: No buffer space available", shaky_inconclusive)}
    tcp = {(UP, 22): TcpResult(UP, 22, "open" if up else "timeout", 0.3 if up else None),
           (UP, 2222): TcpResult(UP, 2222, "refused" if up else "timeout", 0.3 if up else None),
           (SILENT, 22): TcpResult(SILENT, 22, silent_tcp, None),
           (SHAKY, 22): TcpResult(SHAKY, 22, "error", None, "socket: Too many open files")}
    return NamespaceProbe("", icmp, tcp, 0.1)


def run(monitor: HealthMonitor, probe: NamespaceProbe, calls: list | None = None) -> None:
    def fake_probe(netns, addresses, tcp, **kw):
        if calls is not None:
            calls.append((netns, addresses, tcp, kw))
        return probe

    original = health_module.probe_in_namespace
    health_module.probe_in_namespace = fake_probe
    try:
        monitor.check_once()
    finally:
        health_module.probe_in_namespace = original


def addresses(db) -> dict[str, AddressHealth]:
    with db.reader() as s:
        return {h.address: h for h in s.scalars(select(AddressHealth).where(AddressHealth.gateway == GW))}


def ports(db) -> dict[int, ForwardState]:
    with db.reader() as s:
        return {st.forward_id: st for st in s.scalars(select(ForwardState))}


def monitor_for(db, bus=None, **kw) -> HealthMonitor:
    settings = make_settings(db.url, gateways=[GatewayConfig(name=GW, external_address="198.51.100.1",
                                                             port_range=["4000-4100"],
                                                             target_networks=["10.9.0.0/24"])])
    return HealthMonitor(settings, db, bus, **kw)


def test_states_follow_the_threshold_and_usage_is_kept(db):
    bus = Bus()
    monitor = monitor_for(db, bus, rate=1234, concurrency=56)
    calls: list = []
    run(monitor, cycle(), calls)
    # The monitor asks for what the forwards point at, with its own pace.
    [(_, probed, tcp, kw)] = calls
    assert probed == sorted({UP, SILENT, SHAKY}) and len(tcp) == 4
    assert kw["rate"] == 1234 and kw["concurrency"] == 56

    first = addresses(db)
    assert (first[UP].state, first[UP].failures, first[UP].rtt_ms) == ("up", 0, 0.25)
    assert first[UP].last_seen_at is not None and first[UP].changed_at is not None
    # One silent cycle is not enough to call it down.
    assert (first[SILENT].state, first[SILENT].failures, first[SILENT].changed_at) == ("unknown", 1, None)
    # Inconclusive: checked, nothing learned.
    assert (first[SHAKY].state, first[SHAKY].failures, first[SHAKY].last_checked_at is not None) == ("unknown", 0,
                                                                                                        True)
    st = ports(db)
    assert (st[1].port_state, st[1].port_failures) == ("open", 0)
    assert (st[1].connections, st[1].packets, st[1].bytes, st[1].raw_bytes) == (5, 50, 500, 500)
    assert (st[2].port_state, st[2].port_failures) == ("unknown", 1)
    assert (st[3].port_state, st[3].port_failures) == ("unknown", 1)
    assert (st[4].port_state, st[4].port_failures, st[4].connections) == ("unknown", 0, 0)
    assert all(s.port_checked_at is not None for s in st.values())
    assert [(e.fields["address"], e.fields["previous"], e.fields["state"], e.fields["owner"], e.fields["names"])
            for e in bus.events] == [(UP, "unknown", "up", "alice", "vm1")]

    run(monitor, cycle(silent_tcp="unreachable"))
    second = addresses(db)
    assert (second[SILENT].state, second[SILENT].failures) == ("down", 2)
    assert second[SILENT].changed_at is not None and second[SILENT].last_seen_at is None
    assert second[UP].changed_at == first[UP].changed_at          # still up: not a change
    assert second[UP].last_checked_at > first[UP].last_checked_at
    st = ports(db)
    assert (st[2].port_state, st[2].port_failures) == ("refused", 2)
    assert (st[3].port_state, st[3].port_failures) == ("unreachable", 2)
    assert [(e.fields["address"], e.fields["state"], e.fields["owner"], e.fields["names"])
            for e in bus.events[1:]] == [(SILENT, "down", "bob", "ghost")]

    # The machine goes away: down after two cycles, its rtt and last_seen_at as they were meanwhile.
    run(monitor, cycle(up=False, shaky_inconclusive=False))
    third = addresses(db)
    assert (third[UP].state, third[UP].failures, third[UP].rtt_ms) == ("up", 1, None)
    assert third[UP].last_seen_at == second[UP].last_seen_at
    assert (third[SHAKY].state, third[SHAKY].failures) == ("unknown", 1)
    run(monitor, cycle(up=False))
    fourth = addresses(db)
    assert (fourth[UP].state, fourth[UP].failures) == ("down", 2)
    assert (fourth[SHAKY].state, fourth[SHAKY].failures) == ("unknown", 1)     # inconclusive again: kept
    assert (ports(db)[1].port_state, ports(db)[1].port_failures) == ("timeout", 2)
    run(monitor, cycle())
    assert addresses(db)[UP].state == "up" and ports(db)[1].port_state == "open"
    transitions = [(e.fields["address"], e.fields["previous"], e.fields["state"]) for e in bus.events]
    assert transitions[-2:] == [(UP, "up", "down"), (UP, "down", "up")]


def test_addresses_no_forward_uses_are_dropped_and_a_gateway_without_forwards_is_cleared(db):
    monitor = monitor_for(db)
    run(monitor, cycle())
    with db.writer() as s:
        s.execute(delete(Forward).where(Forward.target_address == SHAKY))
        s.commit()
    only_two = cycle()
    del only_two.icmp[SHAKY], only_two.tcp[(SHAKY, 22)]
    run(monitor, only_two)
    assert sorted(addresses(db)) == sorted([UP, SILENT])
    with db.writer() as s:
        s.execute(delete(Forward))
        s.commit()
    run(monitor, cycle())
    assert addresses(db) == {}


def test_a_forward_deleted_during_the_probe_gets_no_state_row(db):
    # The forwards are read before the probe, which takes seconds; one is deleted meanwhile (its forward_state
    # row, if any, goes with it). Recording the cycle must neither fail nor leave a row behind for it.
    monitor = monitor_for(db)
    with db.reader() as s:
        rows = queries.probe_targets(s, GW)
    with db.writer() as s:
        s.execute(delete(Forward).where(Forward.id == 3))
        s.commit()
    monitor._record(GW, rows, cycle())
    st = ports(db)
    assert sorted(st) == [1, 2, 4] and st[2].port_failures == 1
