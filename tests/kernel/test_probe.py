"""Reachability probes against real namespaces: ICMP and TCP from inside a gateway namespace, a lab going away and
coming back, ICMP errors, and a few hundred addresses at once.  Needs root (conftest fails the run otherwise).

No test here times the probes: how long a cycle takes is measured by bench/probe_cycle.py. Where "at once" is the
point (an ICMP error, no route), the probe is given a timeout three times longer than the test waits for its
answer, so a probe that waited for silence could not pass."""

from __future__ import annotations

import ipaddress
import os
import re
import resource
import socket
import subprocess
import threading
import time
import uuid

import pytest

from labgate.dataplane.netns import NamespaceWorker
from labgate.lab import Service, create_lab, destroy_lab, in_netns, remove_namespace
from labgate.workers.probe import IcmpResult, icmp_probe, probe_in_namespace, tcp_probe

pytestmark = pytest.mark.kernel

TIMEOUT = 0.5
ATTEMPTS = 2
SILENCE = 30.0              # a probe timeout three times longer than `without_waiting` waits
DEAD = "10.9.0.77"          # inside the lab network, nobody has it
NO_ROUTE = "10.200.0.1"     # the gateway namespace has no route there
_prefixes: list[str] = []


def _ours_left() -> list[str]:
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    return sorted(n for n in names if any(n.startswith(p + "-") for p in _prefixes))


@pytest.fixture(scope="module", autouse=True)
def _nothing_left_behind():
    yield
    left = _ours_left()
    for ns in left:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    assert not left, f"namespaces left behind: {left}"


@pytest.fixture
def lab():
    prefix = "lgp" + uuid.uuid4().hex[:6]
    _prefixes.append(prefix)
    built = create_lab(prefix)
    try:
        yield built
    finally:
        destroy_lab(built)


def ip(*args: str, input: str | None = None) -> None:
    subprocess.run(["ip", *args], input=input, text=True, capture_output=True, check=True)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def without_waiting(probe, bound: float = SILENCE / 3):
    """The result of `probe()`, which is given SILENCE as its timeout: it must end on what it learns (an error, a
    reply), not on silence. Waits for it at most `bound` seconds, a third of the shortest wait for silence."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(probe()), daemon=True)
    thread.start()
    thread.join(bound)
    assert out, "the probe waited for its timeout instead of ending on the answer it had"
    return out[0]


# ----------------------------------------------------------------------------------------------------------- ICMP


def test_gateway_sees_lab_machines_alive_and_unused_address_down(lab):
    worker = NamespaceWorker(lab.gateway_ns)
    try:
        addresses = ["10.9.0.5", DEAD, "10.9.0.6", "10.9.0.5", "not-an-ip", "::ffff:10.9.0.6"]
        found = worker.run(lambda: icmp_probe(addresses, timeout=TIMEOUT, attempts=ATTEMPTS))
    finally:
        worker.close()

    assert list(found) == ["10.9.0.5", DEAD, "10.9.0.6", "not-an-ip", "::ffff:10.9.0.6"]   # input order, once each
    for address in ("10.9.0.5", "10.9.0.6"):
        result = found[address]
        assert result.alive and result.error is None and not result.inconclusive, result
        assert result.rtt_ms is not None and 0 <= result.rtt_ms < TIMEOUT * 1000
    assert found[DEAD] == IcmpResult(DEAD, False, None, "timeout")
    assert found["not-an-ip"] == IcmpResult("not-an-ip", False, None, "invalid address")
    assert not found["::ffff:10.9.0.6"].alive       # an IPv6 address (v4-mapped): the namespace has no IPv6 route


def test_client_namespace_cannot_see_the_lab(lab):
    # No route: known at once, nothing to wait for.
    report = without_waiting(lambda: probe_in_namespace(
        lab.client_ns, lab.machine_addresses, [(lab.machine_addresses[0], 22)], timeout=SILENCE, attempts=ATTEMPTS))
    for address in lab.machine_addresses:
        result = report.icmp[address]
        assert not result.alive and not result.inconclusive
        assert result.error.startswith("no route"), result
    assert report.tcp[(lab.machine_addresses[0], 22)].state == "unreachable"
    # ... while the gateway sees them.
    assert all(r.alive for r in probe_in_namespace(lab.gateway_ns, lab.machine_addresses).icmp.values())


def test_icmp_error_from_a_router_makes_the_address_down_at_once(lab):
    # The gateway routes 10.66.0.0/16 to the lab namespace, which forwards and has an "unreachable" route for it:
    # it answers our echo request with an ICMP host unreachable.
    ip("-n", lab.gateway_ns, "route", "add", "10.66.0.0/16", "via", "10.9.0.5")
    ip("-n", lab.lab_ns, "route", "add", "unreachable", "10.66.1.0/24")
    in_netns(lab.lab_ns, lambda: open("/proc/sys/net/ipv4/ip_forward", "w").write("1"))

    # Count what is sent to the address: one request, answered by the error, is never retried.
    rules = """table ip lgprobe {
      chain out {
        type filter hook output priority 0; policy accept;
        ip daddr 10.66.1.1 icmp type echo-request counter
      }
    }"""
    subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "-f", "-"], input=rules, text=True, check=True)
    report = without_waiting(lambda: probe_in_namespace(lab.gateway_ns, ["10.66.1.1", "10.9.0.5"], timeout=SILENCE,
                                                        attempts=3))
    listing = subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "list", "table", "ip", "lgprobe"],
                             capture_output=True, text=True, check=True).stdout
    assert re.findall(r"counter packets (\d+)", listing) == ["1"], listing
    assert report.icmp["10.66.1.1"] == IcmpResult("10.66.1.1", False, None, "host unreachable (from 10.9.0.5)")
    assert report.icmp["10.9.0.5"].alive


def test_refused_sends_are_retried_then_inconclusive_not_down(lab):
    # A local firewall refuses some requests (EPERM on send): 10.9.0.6's first ones only (a byte quota), all of
    # 10.9.0.5's.  The first must still come out alive, the second unknown - never "down".
    rules = """table ip lgprobe {
      chain out {
        type filter hook output priority 0; policy accept;
        ip daddr 10.9.0.6 icmp type echo-request quota until 80 bytes counter drop
        ip daddr 10.9.0.5 icmp type echo-request counter drop
      }
    }"""
    subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "-f", "-"], input=rules, text=True, check=True)
    found = in_netns(lab.gateway_ns, lambda: icmp_probe(["10.9.0.5", "10.9.0.6"], timeout=TIMEOUT))
    listing = subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "list", "table", "ip", "lgprobe"],
                             capture_output=True, text=True, check=True).stdout
    dropped = [int(n) for n in re.findall(r"counter packets (\d+)", listing)]
    assert dropped[0] >= 1 and dropped[1] >= 3, listing
    assert found["10.9.0.6"].alive, found["10.9.0.6"]
    assert found["10.9.0.5"] == IcmpResult("10.9.0.5", False, None, "send failed: Operation not permitted", True)


def test_ipv6_loopback_alive_and_unrouted_down(lab):
    found = in_netns(lab.gateway_ns, lambda: icmp_probe(["::1", "2001:db8::1"], timeout=TIMEOUT))
    assert found["::1"].alive and found["::1"].rtt_ms is not None
    assert not found["2001:db8::1"].alive and found["2001:db8::1"].error.startswith("no route")


def test_two_probes_in_one_namespace_at_once_do_not_mix_replies(lab):
    # Both raw sockets see every reply of the namespace; each must keep only its own.
    results: dict[str, dict] = {}

    def run(name: str, addresses: list[str]) -> None:
        results[name] = in_netns(lab.gateway_ns, lambda: icmp_probe(addresses, timeout=TIMEOUT, rate=200))

    threads = [threading.Thread(target=run, args=("a", ["10.9.0.5", DEAD])),
               threading.Thread(target=run, args=("b", [DEAD, "10.9.0.6", "10.9.0.5"]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {a: r.alive for a, r in results["a"].items()} == {"10.9.0.5": True, DEAD: False}
    assert {a: r.alive for a, r in results["b"].items()} == {DEAD: False, "10.9.0.6": True, "10.9.0.5": True}


# ------------------------------------------------------------------------------------------------------------ TCP


def test_tcp_open_refused_timeout_unreachable(lab):
    service = Service.start_tcp_echo(lab.lab_ns, "10.9.0.5", 7100)
    try:
        targets = [("10.9.0.5", 7100), ("10.9.0.5", 7101), (DEAD, 7100), (NO_ROUTE, 80), ("10.9.0.6", 7100),
                   ("10.9.0.5", 7100), ("bad", 1), ("10.9.0.5", 70000)]
        fds = open_fds()
        found = in_netns(lab.gateway_ns, lambda: tcp_probe(targets, timeout=TIMEOUT))
        assert open_fds() == fds                    # every socket closed
        assert service.running                      # a probe (closed with a reset) does not hurt the service
    finally:
        service.stop()

    assert list(found) == [("10.9.0.5", 7100), ("10.9.0.5", 7101), (DEAD, 7100), (NO_ROUTE, 80),
                           ("10.9.0.6", 7100), ("bad", 1), ("10.9.0.5", 70000)]
    states = {target: result.state for target, result in found.items()}
    assert states == {("10.9.0.5", 7100): "open", ("10.9.0.5", 7101): "refused", (DEAD, 7100): "timeout",
                      (NO_ROUTE, 80): "unreachable", ("10.9.0.6", 7100): "refused", ("bad", 1): "error",
                      ("10.9.0.5", 70000): "error"}
    assert found[("10.9.0.5", 7100)].rtt_ms is not None and found[("10.9.0.5", 7101)].rtt_ms is not None
    assert found[(DEAD, 7100)].rtt_ms is None


def test_tcp_concurrency_limit_still_probes_everything(lab):
    service = Service.start_tcp_echo(lab.lab_ns, "10.9.0.6", 7200)
    try:
        targets = [("10.9.0.6", port) for port in range(7190, 7230)] + [(DEAD, port) for port in range(1, 6)]
        found = in_netns(lab.gateway_ns, lambda: tcp_probe(targets, timeout=TIMEOUT, concurrency=7))
    finally:
        service.stop()
    assert [t for t, r in found.items() if r.state == "open"] == [("10.9.0.6", 7200)]
    assert sum(r.state == "refused" for r in found.values()) == 39
    assert sum(r.state == "timeout" for r in found.values()) == 5


def _silent_ports(lab, count: int) -> list[tuple[str, int]]:
    """`count` TCP targets that never answer: ports of one address routed to the lab namespace, which drops them
    (it does not forward). One address, so one neighbour entry."""
    ip("-n", lab.gateway_ns, "route", "add", "10.98.0.0/16", "via", "10.9.0.5")
    return [("10.98.0.1", port) for port in range(1, count + 1)]


def _peak_descriptors(job) -> tuple[object, int, list[OSError]]:
    """Run job() in a thread while this one samples the process's open descriptors and, once the job holds more
    than 50, opens (and closes) 100 sockets of its own: (what job returned, peak count, errors opening)."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(job()), daemon=True)
    before = open_fds()
    peak, errors, tried = before, [], False
    thread.start()
    while thread.is_alive():
        peak = max(peak, open_fds())
        if not tried and peak > before + 50:
            tried, mine = True, []
            try:
                for _ in range(100):
                    mine.append(socket.socket())
            except OSError as exc:
                errors.append(exc)
            for sock in mine:
                sock.close()
        time.sleep(0.005)
    thread.join()
    assert tried, "the probe never held more than 50 sockets"
    return out[0], peak - before, errors


def test_tcp_timeouts_of_silent_targets_overlap(lab):
    # 1,500 silent targets: with the default concurrency every connect is in flight at once, so their timeouts
    # run together (one timeout for all, not one per 1,000).
    targets = _silent_ports(lab, 1500)
    # Room for all of them above the probe's headroom (as `serve` raises its soft limit to the hard one).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = open_fds() + 1500 + 2048 + 200
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, wanted)) if hard != resource.RLIM_INFINITY
                                                else max(soft, wanted), hard))
    try:
        found, peak, errors = _peak_descriptors(lambda: in_netns(lab.gateway_ns,
                                                                 lambda: tcp_probe(targets, timeout=TIMEOUT)))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [r.state for r in found.values()] == ["timeout"] * 1500
    assert peak >= 1500 and not errors


def test_tcp_probe_leaves_descriptors_to_the_rest_of_the_process(lab):
    # A small descriptor limit: the probe must not take every free descriptor, however high its concurrency, or
    # the rest of the process (API connections, the database, libnftables) cannot open one.
    targets = _silent_ports(lab, 600)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds() + 400, hard))
    try:
        found, peak, errors = _peak_descriptors(lambda: in_netns(
            lab.gateway_ns, lambda: tcp_probe(targets, timeout=TIMEOUT, concurrency=100_000)))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not errors, errors
    assert [r.state for r in found.values()] == ["timeout"] * 600
    assert peak <= 300


# ------------------------------------------------------------------------------------------- a lab going away


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value


def test_target_namespace_down_then_back_then_gone(lab):
    machine = "10.9.0.5"
    service = Service.start_tcp_echo(lab.lab_ns, machine, 7300)
    try:
        def probe():
            return probe_in_namespace(lab.gateway_ns, [machine], [(machine, 7300)], timeout=TIMEOUT)

        first = probe()
        assert first.icmp[machine].alive and first.tcp[(machine, 7300)].state == "open"

        ip("-n", lab.lab_ns, "link", "set", "dev", lab.lab_ifname, "down")
        down = probe()
        assert not down.icmp[machine].alive and not down.icmp[machine].inconclusive
        assert down.tcp[(machine, 7300)].state in ("timeout", "unreachable")

        ip("-n", lab.lab_ns, "link", "set", "dev", lab.lab_ifname, "up")
        ip("-n", lab.lab_ns, "route", "replace", "default", "via", lab.gateway_lab_address)
        back = wait_for(lambda: (r := probe()).icmp[machine].alive and r.tcp[(machine, 7300)].state == "open" and r)
        assert back, "the machine did not come back up"
    finally:
        service.stop()

    # The lab namespace deleted: its veth goes with it (the kernel dismantles a namespace asynchronously, a moment
    # later), and the gateway has no route left to the lab network.
    remove_namespace(lab.lab_ns)
    def gone():
        r = probe_in_namespace(lab.gateway_ns, [machine], [(machine, 7300)], timeout=TIMEOUT)
        return (r.icmp[machine].error or "").startswith("no route") and r.tcp[(machine, 7300)].state == "unreachable"

    assert wait_for(gone), "the gateway still has a route to the machine after its namespace was deleted"


# ---------------------------------------------------------------------------------------------- many addresses


def test_hundreds_of_addresses(lab):
    # 200 live machines on the lab interface (on-link for the gateway), 40 unused on-link addresses (ARP gets no
    # answer) and 160 in a network routed to the lab namespace, which drops them (it does not forward).
    live = [f"10.9.0.{i}" for i in range(10, 210)]
    ip("-n", lab.lab_ns, "-batch", "-", input="".join(f"address add {a}/24 dev {lab.lab_ifname}\n" for a in live))
    ip("-n", lab.gateway_ns, "route", "add", "10.99.0.0/16", "via", "10.9.0.5")
    dead = [f"10.9.0.{i}" for i in range(210, 250)]
    dead += [str(ipaddress.IPv4Address("10.99.0.1") + i) for i in range(160)]
    addresses = [a for pair in zip(live, dead) for a in pair]

    report = probe_in_namespace(lab.gateway_ns, addresses, timeout=TIMEOUT, attempts=ATTEMPTS, rate=5000)
    assert sorted(a for a, r in report.icmp.items() if r.alive) == sorted(live)
    assert all(report.icmp[a].error == "timeout" and not report.icmp[a].inconclusive for a in dead)
