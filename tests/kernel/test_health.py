"""Reachability checks from inside the gateway namespace: bad records show up in the API and as events."""

from __future__ import annotations

import subprocess

import pytest

from labgate.lab import Service
from tests.conftest import make_settings
from tests.harness import running_server, database_url
from tests.kernel.conftest import gateway_for

pytestmark = pytest.mark.kernel


def probe_counts(metrics: str) -> dict[tuple[str, str], float]:
    """labgate_probes_total of gateway "lab" by (kind, result)."""
    return {(k, r): float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
            for k in ("icmp", "tcp") for r in ("up", "down", "inconclusive")
            if line.startswith(f'labgate_probes_total{{gateway="lab",kind="{k}",result="{r}"}}')}


def test_targets_turn_down_and_up_with_a_threshold_and_bad_records_are_listed(lab, tmp_path):
    m1 = lab.machine_addresses[0]
    dead = "10.9.0.77"
    svc = Service.start_tcp_echo(lab.lab_ns, m1, 22)
    settings = make_settings(database_url(tmp_path, "lg.db"), dataplane="nft", gateways=[gateway_for(lab)])
    settings.server.health_interval = 3600  # cycles are run by hand below
    try:
        with running_server(settings) as srv, srv.client(srv.token("alice")) as c:
            ok = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22, "name": "vm1"}).json()
            closed = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 2222,
                                                      "name": "vm1"}).json()
            gone = c.post("/api/v1/forwards", json={"target_address": dead, "target_port": 22,
                                                    "name": "ghost"}).json()
            assert ok["health"]["state"] == "unknown"
            with srv.client(srv.token("root", admin=True)) as admin:
                counted_before = probe_counts(admin.get("/metrics").text)
            monitor = srv.labgate.health
            monitor.check_once()

            def health(fwd):
                return c.get(f"/api/v1/forwards/{fwd['id']}").json()["health"]

            # One failed cycle is not enough to call a record bad; an answer is enough to call it good.
            assert health(ok)["state"] == "up" and health(ok)["rtt_ms"] is not None
            assert health(gone)["address"] == "unknown"
            monitor.check_once()
            assert health(gone)["state"] == "down" and health(gone)["address"] == "down"
            assert health(closed)["port"] == "refused" and health(closed)["state"] == "down"
            assert health(ok)["port"] == "open" and health(ok)["last_seen_at"]
            bad = c.get("/api/v1/machines", params={"status": "down"}).json()["results"]
            # A machine is bad when an address does not answer; vm1 answers (one closed port is the forward's health).
            assert [m["name"] for m in bad] == ["ghost"]
            ghost = next(m for m in bad if m["name"] == "ghost")
            assert ghost["address_health"] == {dead: "down"}

            # The lab's link goes down: the machine turns down after the threshold, and back up at once.
            subprocess.run(["ip", "-n", lab.lab_ns, "link", "set", "lab0", "down"], check=True)
            monitor.check_once()
            assert health(ok)["address"] == "up"
            monitor.check_once()
            assert health(ok)["address"] == "down"
            subprocess.run(["ip", "-n", lab.lab_ns, "link", "set", "lab0", "up"], check=True)
            subprocess.run(["ip", "-n", lab.lab_ns, "route", "replace", "default", "via", lab.gateway_lab_address],
                           check=True)
            monitor.check_once()
            assert health(ok)["address"] == "up"
            events = c.get("/api/v1/events", params={"kind": "health"}).json()["results"]
            transitions = [(e["fields"]["address"], e["fields"]["previous"], e["fields"]["state"]) for e in events]
            assert (m1, "up", "down") in transitions and (m1, "down", "up") in transitions
            assert (dead, "unknown", "down") in transitions
            assert all(e["fields"]["owner"] == "alice" for e in events)
            # Each probe's result is counted on /metrics: 5 cycles of 2 addresses and 3 ports; the ghost never
            # answers, vm1 does except in the 2 cycles of its link down.
            with srv.client(srv.token("root", admin=True)) as admin:
                metrics = admin.get("/metrics").text
            # The counters are the process's: what this test's cycles added.
            after = probe_counts(metrics)
            counts = {key: after[key] - counted_before.get(key, 0.0) for key in after}
            assert sum(v for (k, _), v in counts.items() if k == "icmp") == 10, counts
            assert sum(v for (k, _), v in counts.items() if k == "tcp") == 15, counts
            assert (counts[("icmp", "up")], counts[("icmp", "down")], counts[("tcp", "up")]) == (3, 7, 3), counts
            assert "labgate_probe_cycle_seconds " in metrics
    finally:
        svc.stop()
