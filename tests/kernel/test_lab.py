"""The namespace lab itself, without any NAT: shape, routing, services, clients, cleanup and coexistence."""

from __future__ import annotations

import os
import sys
import subprocess
import time
import uuid

import pytest

from labgate import lab as labmod
from labgate.lab import (LabError, Service, TcpSession, create_lab, destroy_lab, list_labs, netns_exec, tcp_request,
                         udp_request)

pytestmark = pytest.mark.kernel

_prefixes: list[str] = []


def new_prefix() -> str:
    prefix = "lgt" + uuid.uuid4().hex[:6]
    _prefixes.append(prefix)
    return prefix


def namespaces() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def ours_left() -> list[str]:
    return sorted(n for n in namespaces() if any(n.startswith(p + "-") for p in _prefixes))


@pytest.fixture(scope="module", autouse=True)
def _nothing_left_behind():
    yield
    left = ours_left()
    for ns in left:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    assert not left, f"namespaces left behind: {left}"


@pytest.fixture
def built():
    lab = create_lab(new_prefix())
    try:
        yield lab
    finally:
        destroy_lab(lab)


@pytest.fixture
def built2():
    lab = create_lab(new_prefix(), subnet_index=1)
    try:
        yield lab
    finally:
        destroy_lab(lab)


def sysctl(ns: str, key: str) -> str:
    return netns_exec(ns, ["cat", f"/proc/sys/{key}"], check=True).stdout.strip()


def test_shape_addresses_and_sysctls(built):
    lab = built
    assert lab.namespaces == [f"{lab.prefix}-cli", f"{lab.prefix}-gw", f"{lab.prefix}-lab"]
    assert (lab.client_ns, lab.gateway_ns, lab.lab_ns) == tuple(lab.namespaces)
    assert all(len(ns) <= 15 for ns in lab.namespaces)
    assert set(lab.namespaces) <= namespaces()
    assert set(list_labs("lgt")) >= set(lab.namespaces)
    assert (lab.external_address, lab.client_address, lab.client_address2) == \
        ("198.51.100.1", "198.51.100.2", "198.51.100.3")
    assert (lab.lab_network, lab.gateway_lab_address, lab.machine_addresses) == \
        ("10.9.0.0/24", "10.9.0.1", ["10.9.0.5", "10.9.0.6"])
    assert sysctl(lab.gateway_ns, "net/ipv4/ip_forward") == "1"
    assert sysctl(lab.gateway_ns, "net/netfilter/nf_conntrack_acct") == "1"
    # The host's own namespace is left alone.
    addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert "198.51.100." not in addrs and "10.9.0.5" not in addrs
    # lo is up everywhere; the lab machines route through the gateway; the client has no route to the lab.
    for ns in lab.namespaces:
        assert "UP" in netns_exec(ns, ["ip", "-br", "link", "show", "dev", "lo"], check=True).stdout
    lab_routes = netns_exec(lab.lab_ns, ["ip", "route"], check=True).stdout
    assert f"default via {lab.gateway_lab_address}" in lab_routes
    cli_routes = netns_exec(lab.client_ns, ["ip", "route"], check=True).stdout
    assert "10.9." not in cli_routes and "default" not in cli_routes
    assert netns_exec(lab.client_ns, ["ip", "route", "get", lab.machine_addresses[0]]).returncode != 0


def test_lab_machines_reach_the_gateway_and_the_client_reaches_its_external_address(built):
    lab = built
    with Service.start_tcp_echo(lab.gateway_ns, lab.gateway_lab_address, 7000, report_peer=True), \
            Service.start_tcp_echo(lab.gateway_ns, lab.external_address, 7001, tag="gw-ext"), \
            Service.start_udp_echo(lab.gateway_ns, lab.gateway_lab_address, 7002):
        for machine in lab.machine_addresses:
            reply = tcp_request(lab.lab_ns, lab.gateway_lab_address, 7000, "ping", source=machine)
            assert reply is not None and reply.startswith(f"{lab.gateway_lab_address}:peer={machine}:")
            assert reply.endswith(":ping")
        assert udp_request(lab.lab_ns, lab.gateway_lab_address, 7002, "u") == f"{lab.gateway_lab_address}:u"
        # Both client addresses reach the gateway's external side.
        assert tcp_request(lab.client_ns, lab.external_address, 7001, "c", source=lab.client_address) == "gw-ext:c"
        assert tcp_request(lab.client_ns, lab.external_address, 7001, "d", source=lab.client_address2) == "gw-ext:d"


def test_client_cannot_reach_the_lab_without_a_route_and_forwarding_works_with_one(built):
    lab = built
    m1 = lab.machine_addresses[0]
    with Service.start_tcp_echo(lab.lab_ns, m1, 22), Service.start_udp_echo(lab.lab_ns, m1, 53):
        # The machine's service is up (the gateway, on the lab segment, reaches it)...
        assert tcp_request(lab.gateway_ns, m1, 22, "gw") == f"{m1}:gw"
        # ...but the client has no route to it (the kernel says so, rather than a request timing out)...
        assert netns_exec(lab.client_ns, ["ip", "route", "get", m1]).returncode != 0
        assert tcp_request(lab.client_ns, m1, 22, "x", timeout=2) is None
        assert udp_request(lab.client_ns, m1, 53, "x", timeout=2) is None
        # With a route (inside the client namespace only), the gateway forwards: ip_forward is on.
        netns_exec(lab.client_ns, ["ip", "route", "add", lab.lab_network, "via", lab.external_address], check=True)
        reply = tcp_request(lab.client_ns, m1, 22, "routed")
        assert reply == f"{m1}:routed"
        assert udp_request(lab.client_ns, m1, 53, "routed") == f"{m1}:routed"


def test_services_answer_in_their_own_namespace_and_sessions_stay_open(built):
    lab = built
    m1, m2 = lab.machine_addresses
    services = [Service.start_tcp_echo(lab.lab_ns, m1, 22), Service.start_tcp_echo(lab.lab_ns, m2, 22),
                Service.start_udp_echo(lab.lab_ns, m1, 53)]
    try:
        assert all(s.running for s in services)
        # The tag says which machine answered; many sequential connections are served.
        for i in range(20):
            assert tcp_request(lab.lab_ns, m1, 22, f"n{i}") == f"{m1}:n{i}"
        assert tcp_request(lab.lab_ns, m2, 22, "x") == f"{m2}:x"
        assert udp_request(lab.lab_ns, m1, 53, "q") == f"{m1}:q"
        # Nothing listens on those addresses anywhere else: the gateway has no such service of its own.
        assert tcp_request(lab.gateway_ns, lab.gateway_lab_address, 22, "x", timeout=1) is None
        assert tcp_request(lab.lab_ns, m1, 23, "x", timeout=1) is None       # refused: no listener
        assert udp_request(lab.lab_ns, m2, 53, "x", timeout=1) is None       # ICMP port unreachable
        # An established session is held across exchanges while other connections come and go.
        session = TcpSession.open(lab.gateway_ns, m1, 22)
        try:
            assert session.exchange("one") == f"{m1}:one"
            assert tcp_request(lab.gateway_ns, m1, 22, "other") == f"{m1}:other"
            assert session.exchange("two") == f"{m1}:two"
            port = session.local_address[1]
            established = netns_exec(lab.gateway_ns, ["ss", "-Htn", "state", "established"]).stdout
            assert f":{port}" in established
            # When the server goes away the session no longer works, and stays broken.
            services[0].stop()
            assert session.exchange("three", timeout=1) is None
            assert session.exchange("four", timeout=1) is None
        finally:
            session.close()
        assert session.exchange("closed") is None
        with pytest.raises(OSError):
            TcpSession.open(lab.gateway_ns, m1, 22, timeout=1)
    finally:
        for s in services:
            s.stop()
            s.stop()  # idempotent
    assert not any(s.running for s in services)


def test_service_start_failure_is_reported(built):
    lab = built
    with Service.start_tcp_echo(lab.lab_ns, lab.machine_addresses[0], 2000):
        with pytest.raises(LabError, match="failed to start"):
            Service.start_tcp_echo(lab.lab_ns, lab.machine_addresses[0], 2000)  # address in use
    with pytest.raises(LabError, match="failed to start"):
        Service.start_tcp_echo(lab.lab_ns, lab.external_address, 2000)           # not an address of this namespace


def test_destroy_is_idempotent_and_takes_leftover_services_with_it():
    lab = create_lab(new_prefix())
    try:
        svc = Service.start_tcp_echo(lab.lab_ns, lab.machine_addresses[0], 22)
        destroy_lab(lab)  # the service is still running: destroy must not be stopped by it
        assert not set(lab.namespaces) & namespaces()
        deadline = time.monotonic() + 3
        while svc.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not svc.running, "a service left in the lab namespace kept running"
        svc.stop()
        destroy_lab(lab)  # already gone: no error
        assert not set(list_labs("lgt")) & set(lab.namespaces)
        assert netns_exec(lab.gateway_ns, ["true"]).returncode != 0
    finally:
        destroy_lab(lab)
    destroy_lab(lab)


def test_destroy_after_a_partial_removal():
    lab = create_lab(new_prefix())
    try:
        subprocess.run(["ip", "netns", "delete", lab.gateway_ns], check=True)
        destroy_lab(lab)
        assert not set(lab.namespaces) & namespaces()
    finally:
        destroy_lab(lab)


def test_a_failed_build_removes_what_it_built(monkeypatch):
    prefix = new_prefix()
    real_ip = labmod._ip

    def failing_ip(*args):
        if "route" in args:  # the last step: the lab machines' default route
            raise LabError("injected failure")
        return real_ip(*args)

    monkeypatch.setattr(labmod, "_ip", failing_ip)
    with pytest.raises(LabError, match="injected failure"):
        create_lab(prefix)
    monkeypatch.undo()
    assert not [n for n in namespaces() if n.startswith(prefix + "-")]


def test_a_taken_name_is_refused_and_not_removed():
    prefix = new_prefix()
    squatter = f"{prefix}-lab"
    subprocess.run(["ip", "netns", "add", squatter], check=True)
    try:
        with pytest.raises(LabError, match="netns add"):
            create_lab(prefix)
        left = {n for n in namespaces() if n.startswith(prefix + "-")}
        assert left == {squatter}  # the others were removed, the foreign one kept
        # Not created by this module (no marker): list_labs does not claim it.
        assert squatter not in list_labs("lgt")
    finally:
        subprocess.run(["ip", "netns", "delete", squatter], check=True)


def test_two_labs_coexist(built, built2):
    a, b = built, built2
    assert a.external_address == "198.51.100.1" and b.external_address == "198.51.101.1"
    assert b.lab_network == "10.9.1.0/24" and b.machine_addresses == ["10.9.1.5", "10.9.1.6"]
    assert not set(a.namespaces) & set(b.namespaces)
    with Service.start_tcp_echo(a.lab_ns, a.machine_addresses[0], 22), \
            Service.start_tcp_echo(b.lab_ns, b.machine_addresses[0], 22), \
            Service.start_tcp_echo(a.gateway_ns, a.external_address, 80, tag="A"), \
            Service.start_tcp_echo(b.gateway_ns, b.external_address, 80, tag="B"):
        assert tcp_request(a.gateway_ns, a.machine_addresses[0], 22, "x") == f"{a.machine_addresses[0]}:x"
        assert tcp_request(b.gateway_ns, b.machine_addresses[0], 22, "x") == f"{b.machine_addresses[0]}:x"
        assert tcp_request(a.client_ns, a.external_address, 80, "x") == "A:x"
        assert tcp_request(b.client_ns, b.external_address, 80, "x") == "B:x"
        # Separate namespaces: one lab's client cannot see the other lab at all.
        assert tcp_request(a.client_ns, b.external_address, 80, "x", timeout=1) is None
        assert tcp_request(a.gateway_ns, b.machine_addresses[0], 22, "x", timeout=1) is None
    # Removing one leaves the other working.
    destroy_lab(a)
    with Service.start_udp_echo(b.lab_ns, b.machine_addresses[1], 53):
        assert udp_request(b.gateway_ns, b.machine_addresses[1], 53, "still") == f"{b.machine_addresses[1]}:still"
    assert set(b.namespaces) <= set(list_labs("lgt"))


def test_services_never_outlive_their_starter_unless_detached(built):
    lab = built
    m1 = lab.machine_addresses[0]
    # A process starts a service and dies without stopping it: the service exits with it.
    script = ("import os, sys; from labgate.lab import Service; "
              f"s = Service.start_tcp_echo({lab.lab_ns!r}, {m1!r}, 22); print(s.process.pid, flush=True); os._exit(0)")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(labmod.__file__)))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=20)
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 3
    while labmod.namespace_pids(lab.lab_ns) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert labmod.namespace_pids(lab.lab_ns) == []
    assert tcp_request(lab.lab_ns, m1, 22, "x", timeout=1) is None
    # A detached one keeps serving until it is stopped (or its lab destroyed).
    svc = Service.start_tcp_echo(lab.lab_ns, m1, 22, exit_with_parent=False)
    try:
        assert tcp_request(lab.lab_ns, m1, 22, "x") == f"{m1}:x"
        assert labmod.namespace_pids(lab.lab_ns) == [svc.process.pid]
    finally:
        svc.stop()
    assert not svc.running
