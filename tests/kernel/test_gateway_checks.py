"""A gateway that cannot do its work says so: a namespace that does not route (net.ipv4.ip_forward = 0) and a
host-namespace gateway run where /proc/1/ns/net cannot be read (a container, a process without CAP_SYS_PTRACE)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from labgate.lab import Service, in_netns, netns_exec, tcp_request
from tests.conftest import make_settings
from tests.harness import free_port, stop_process, database_url
from tests.harness import running_server
from tests.kernel.conftest import gateway_for

pytestmark = pytest.mark.kernel


def ip_forward(ns: str) -> str:
    return netns_exec(ns, ["sysctl", "-n", "net.ipv4.ip_forward"], capture_output=True, text=True,
                      check=True).stdout.strip()


def set_ip_forward(ns: str, value: int) -> None:
    netns_exec(ns, ["sysctl", "-q", "-w", f"net.ipv4.ip_forward={value}"], check=True)


def host_ip_forward() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


def test_a_gateway_that_does_not_route_is_reported_with_the_fix_and_its_forwards_are_errors(lab, tmp_path):
    m1 = lab.machine_addresses[0]
    set_ip_forward(lab.gateway_ns, 0)
    settings = make_settings(database_url(tmp_path, "lg.db"), dataplane="nft",
                             gateways=[gateway_for(lab, enable_forwarding=False)])
    with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"), running_server(settings) as srv, \
            srv.client(srv.token("alice")) as c:
        gw = c.get("/api/v1/gateways").json()[0]
        assert gw["status"] == "not_forwarding"
        [problem] = gw["problems"]
        assert problem["check"] == "forwarding" and "ip_forward is 0" in problem["message"]
        assert f"ip netns exec {lab.gateway_ns} sysctl -w net.ipv4.ip_forward=1" in problem["fix"]
        assert ip_forward(lab.gateway_ns) == "0"  # enable_forwarding = false: reported, never changed
        fwd = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22}).json()
        assert fwd["status"] == "error"
        metrics = c.get("/metrics").text
        assert 'labgate_gateway_forwarding{gateway="lab"} 0.0' in metrics
        assert 'labgate_gateway_problem{check="forwarding",gateway="lab"} 1.0' in metrics
        assert c.get("/healthz").json()["status"] == "degraded"
        assert tcp_request(lab.client_ns, lab.external_address, fwd["external_port"], "x", timeout=1) is None

        # The admin runs the fix: the next reconcile pass sees it.
        set_ip_forward(lab.gateway_ns, 1)
        srv.labgate.dataplane.reconcile_once()
        gw = c.get("/api/v1/gateways").json()[0]
        assert gw["status"] == "ok" and gw["problems"] == []
        assert c.get(f"/api/v1/forwards/{fwd['id']}").json()["status"] == "active"
        assert 'labgate_gateway_forwarding{gateway="lab"} 1.0' in c.get("/metrics").text
        assert tcp_request(lab.client_ns, lab.external_address, fwd["external_port"], "hello") == "vm1:hello"


def test_a_managed_namespace_gets_forwarding_turned_on_and_the_host_is_left_alone(lab, tmp_path):
    m1 = lab.machine_addresses[0]
    set_ip_forward(lab.gateway_ns, 0)
    before = host_ip_forward()
    settings = make_settings(database_url(tmp_path, "lg.db"), dataplane="nft", gateways=[gateway_for(lab)])
    with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"), running_server(settings) as srv, \
            srv.client(srv.token("alice")) as c:
        assert ip_forward(lab.gateway_ns) == "1"
        gw = c.get("/api/v1/gateways").json()[0]
        assert gw["status"] == "ok" and gw["problems"] == []
        fwd = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22}).json()
        assert fwd["status"] == "active"
        assert tcp_request(lab.client_ns, lab.external_address, fwd["external_port"], "hi") == "vm1:hi"
        # Turned off behind labgate's back: turned on again by the next pass.
        set_ip_forward(lab.gateway_ns, 0)
        srv.labgate.dataplane.reconcile_once()
        assert ip_forward(lab.gateway_ns) == "1"
    assert host_ip_forward() == before


def _api(ns: str, method: str, url: str, **kw) -> httpx.Response:
    return in_netns(ns, lambda: httpx.request(method, url, timeout=10, **kw))


@pytest.mark.sqlite_only  # labgate runs inside the gateway's namespace: the test's PostgreSQL (host loopback) is
# out of its reach there
def test_connection_events_on_a_host_namespace_gateway_without_access_to_pid_1s_namespace(lab, tmp_path):
    """labgate runs inside the gateway namespace as its 'host' namespace (netns = ""), with only CAP_NET_ADMIN and
    CAP_NET_RAW: /proc/1/ns/net cannot be read there, as in a container or under a hardened service unit."""
    m1 = lab.machine_addresses[0]
    port = free_port()
    config = tmp_path / "labgate.toml"
    config.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
database = "sqlite:///{tmp_path}/lg.db"
health_interval = 3600
usage_interval = 3600

[[gateway]]
name = "lab"
netns = ""
external_address = "{lab.external_address}"
port_range = "4000-4100"
target_networks = ["{lab.lab_network}"]
""")
    labgate = [sys.executable, "-m", "labgate"]
    token = subprocess.run(labgate + ["token", "create", "alice", "--config", str(config)], capture_output=True,
                           text=True, check=True).stdout.strip()
    # As uid 0 but with a bounding set of NET_ADMIN + NET_RAW only, exactly as verified: stat(/proc/1/ns/net) fails.
    probe = netns_exec(lab.gateway_ns, ["setpriv", "--bounding-set", "-all,+net_admin,+net_raw", "stat", "-L",
                                        "/proc/1/ns/net"], capture_output=True, text=True)
    assert probe.returncode != 0, "the test's premise: pid 1's namespace must be unreadable for the server"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(["ip", "netns", "exec", lab.gateway_ns, "setpriv", "--bounding-set",
                             "-all,+net_admin,+net_raw"] + labgate + ["serve", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"):
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    if _api(lab.gateway_ns, "GET", f"{base}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
            fwd = _api(lab.gateway_ns, "POST", f"{base}/api/v1/forwards", headers=headers,
                       json={"target_address": m1, "target_port": 22, "name": "vm1"}).json()
            events: list = []
            deadline = time.monotonic() + 20
            while not events:
                assert time.monotonic() < deadline, (
                    "no connection event; gateways: "
                    + _api(lab.gateway_ns, "GET", f"{base}/api/v1/gateways", headers=headers).text)
                assert tcp_request(lab.client_ns, lab.external_address, fwd["external_port"], "hi") == "vm1:hi"
                events = _api(lab.gateway_ns, "GET", f"{base}/api/v1/events", headers=headers,
                              params={"kind": "connection"}).json()["results"]
                if not events:
                    time.sleep(0.3)
            assert events[0]["fields"]["forward_id"] == fwd["id"] and events[0]["fields"]["name"] == "vm1"
            gw = _api(lab.gateway_ns, "GET", f"{base}/api/v1/gateways", headers=headers).json()[0]
            assert gw["status"] == "ok" and gw["problems"] == []
    finally:
        stop_process(proc)
        log.close()


def test_a_connection_watcher_that_cannot_run_is_a_gateway_problem(lab, tmp_path, monkeypatch):
    """No conntrack program: forwarding works, but the gateway says events are not collected and how to fix it."""
    monkeypatch.setattr("labgate.workers.connections.ConnectionWatcher._command",
                        lambda self: [str(tmp_path / "no-such-conntrack"), "-E"])
    settings = make_settings(database_url(tmp_path, "lg.db"), dataplane="nft", gateways=[gateway_for(lab)])
    with running_server(settings) as srv, srv.client(srv.token("alice")) as c:
        deadline = time.monotonic() + 10
        while True:
            gw = c.get("/api/v1/gateways").json()[0]
            if gw["problems"]:
                break
            assert time.monotonic() < deadline, gw
            time.sleep(0.1)
        assert gw["status"] == "degraded"
        [problem] = gw["problems"]
        assert problem["check"] == "connection_events" and "no-such-conntrack" in problem["message"]
        assert "conntrack" in problem["fix"]


def test_serve_on_a_busy_port_fails_before_touching_the_kernel(lab, tmp_path):
    """A second `make run` must not re-sync the live table of the labgate already running before it fails."""
    import socket

    from tests.kernel.conftest import nft_tables

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        config = tmp_path / "labgate.toml"
        config.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
database = "{database_url(tmp_path, "lg.db")}"

[[gateway]]
name = "lab"
netns = "{lab.gateway_ns}"
external_address = "{lab.external_address}"
target_networks = ["{lab.lab_network}"]
""")
        done = subprocess.run([sys.executable, "-m", "labgate", "serve", "--config", str(config)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 6, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--listen" in done.stderr
    assert not [t for t in nft_tables(lab.gateway_ns) if "labgate" in t]
