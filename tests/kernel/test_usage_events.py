"""Usage counters and connection events, from real traffic through real forwards."""

from __future__ import annotations

import subprocess
import time

import pytest

from labgate.lab import Service, tcp_request, udp_request
from tests.conftest import make_settings
from tests.harness import running_server, database_url
from tests.kernel.conftest import gateway_for

pytestmark = pytest.mark.kernel


def settings_for(lab, tmp_path):
    s = make_settings(database_url(tmp_path, "lg.db"), dataplane="nft", gateways=[gateway_for(lab)])
    s.server.usage_interval = 3600  # collected on demand below
    return s


def wait_for(predicate, timeout=10.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not reached in time")


def test_usage_counts_connections_packets_bytes_and_survives_a_full_rerender(lab, tmp_path):
    m1, m2 = lab.machine_addresses[:2]
    svcs = [Service.start_tcp_echo(lab.lab_ns, m1, 22), Service.start_tcp_echo(lab.lab_ns, m2, 22)]
    try:
        with running_server(settings_for(lab, tmp_path)) as srv, srv.client(srv.token("alice")) as c:
            used = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22, "name": "vm1"}).json()
            idle = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22, "name": "vm2"}).json()
            assert used["usage"] == {"connections": 0, "packets": 0, "bytes": 0, "last_used_at": None}
            for i in range(3):
                assert tcp_request(lab.client_ns, lab.external_address, used["external_port"], f"hi{i}")
            srv.labgate.usage.collect_once()
            u = c.get(f"/api/v1/forwards/{used['id']}").json()["usage"]
            assert u["connections"] == 3 and u["packets"] >= 3 * 6 and u["bytes"] > 0 and u["last_used_at"]
            assert c.get(f"/api/v1/forwards/{idle['id']}").json()["usage"]["connections"] == 0
            with srv.client(srv.token("root", admin=True)) as admin:  # per-forward series are for admins
                metrics = admin.get("/metrics").text
            assert "vm1" not in c.get("/metrics").text
            assert (f'labgate_forward_connections_total{{forward_id="{used["id"]}",gateway="lab",name="vm1",'
                    f'owner="alice"}} 3.0') in metrics
            assert f'forward_id="{idle["id"]}"' not in metrics  # unused forwards add no series
            # A retarget and a full re-render of the forwarding table keep the counts.
            c.patch(f"/api/v1/forwards/{used['id']}", json={"target_address": m2})
            subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "delete", "table", "ip", "labgate_lab"],
                           check=True)
            srv.labgate.dataplane.request_full_sync("lab")
            srv.labgate.dataplane.reconcile_once()
            assert tcp_request(lab.client_ns, lab.external_address, used["external_port"], "again")
            srv.labgate.usage.collect_once()
            assert c.get(f"/api/v1/forwards/{used['id']}").json()["usage"]["connections"] == 4
            # The counters table itself deleted: totals are kept, counting resumes from zero.
            subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "delete", "table", "ip",
                            "labgate_lab_usage"], check=True)
            srv.labgate.dataplane.reconcile_once()
            assert tcp_request(lab.client_ns, lab.external_address, used["external_port"], "more")
            srv.labgate.usage.collect_once()
            assert c.get(f"/api/v1/forwards/{used['id']}").json()["usage"]["connections"] == 5
    finally:
        for s in svcs:
            s.stop()


def test_each_forwarded_connection_is_an_event_with_its_forward_owner_and_endpoints(lab, tmp_path):
    m1 = lab.machine_addresses[0]
    svcs = [Service.start_tcp_echo(lab.lab_ns, m1, 22), Service.start_udp_echo(lab.lab_ns, m1, 53)]
    try:
        with running_server(settings_for(lab, tmp_path)) as srv:
            alice, bob = srv.client(srv.token("alice")), srv.client(srv.token("bob"))
            tcp = alice.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22, "name": "vm1"}).json()
            udp = bob.post("/api/v1/forwards", json={"target_address": m1, "target_port": 53, "protocol": "udp",
                                                     "name": "dns"}).json()
            watcher = srv.labgate.watchers["lab"]
            assert watcher.ready.wait(10)
            assert tcp_request(lab.client_ns, lab.external_address, tcp["external_port"], "x",
                               source=lab.client_address)
            assert udp_request(lab.client_ns, lab.external_address, udp["external_port"], "y")
            events = wait_for(lambda: [e for e in alice.get("/api/v1/events", params={"kind": "connection"})
                                       .json()["results"]])
            fields = events[0]["fields"]
            assert fields["forward_id"] == tcp["id"] and fields["owner"] == "alice" and fields["name"] == "vm1"
            assert fields["protocol"] == "tcp" and fields["src_ip"] == lab.client_address
            assert fields["external_port"] == tcp["external_port"] and fields["gateway"] == "lab"
            assert fields["target_ip"] == m1 and fields["target_port"] == 22
            assert isinstance(fields["src_port"], int) and fields["src_port"] > 0
            # Each owner sees only their own connections; bob's UDP one arrives too.
            assert all(e["fields"]["owner"] == "alice" for e in events)
            bob_events = wait_for(lambda: bob.get("/api/v1/events", params={"kind": "connection"}).json()["results"])
            assert bob_events[0]["fields"]["protocol"] == "udp" and bob_events[0]["fields"]["forward_id"] == udp["id"]
            # Forward changes are events too.
            kinds = {e["fields"].get("action") for e in alice.get("/api/v1/events", params={"kind": "forward"})
                     .json()["results"]}
            assert "created" in kinds
            alice.close()
            bob.close()
    finally:
        for s in svcs:
            s.stop()
