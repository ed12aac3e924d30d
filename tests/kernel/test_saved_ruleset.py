"""labgate's tables survive what operators do with a ruleset: `nft list ruleset > /etc/nftables.conf` and, at boot,
`nft -f /etc/nftables.conf`. Every rule labgate renders must therefore list in a form nft reads back, meaning the
same thing: the listing of a live gateway is saved, the tables are removed, the listing is loaded again, and the
kernel must hold exactly what it held before and forward real traffic exactly as before (single ports, a port
block, allowed_sources, UDP, masquerading on and off, and no masquerading of another table's DNAT).

Everything happens in the namespaces of a lab built for the test (see tests/kernel/conftest.py), removed afterwards
whatever happens; the host's own ruleset is never read nor touched."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest

from labgate.dataplane.render import (
    ForwardRule,
    GatewayShape,
    render_gateway_table,
    render_usage_ensure,
    render_usage_table,
)
from labgate.lab import Lab, Service, netns_exec, tcp_request, udp_request

pytestmark = pytest.mark.kernel

TABLE = "labgate_lab"
USAGE = f"{TABLE}_usage"
FOREIGN_PORT = 7000  # outside labgate's ranges: another system's DNAT, which labgate must not masquerade


def nft(ns: str, *args: str, stdin: str | None = None) -> str:
    """Run nft in namespace `ns`; fail the test with nft's own message when it refuses."""
    proc = netns_exec(ns, ["nft", *args], input=stdin)
    assert proc.returncode == 0, f"nft {' '.join(args)} failed in {ns}: {proc.stderr.strip()}"
    return proc.stdout


def tag_of(reply: str | None) -> str | None:
    return reply.split(":", 1)[0] if reply else None


def peer_of(reply: str | None) -> str | None:
    """The source address the lab machine saw (a report_peer service answers "tag:peer=ip:port:payload")."""
    return reply.split("peer=", 1)[1].split(":", 1)[0] if reply and "peer=" in reply else None


@dataclass
class Gateway:
    lab: Lab
    masquerade: bool
    shape: GatewayShape
    rules: list[ForwardRule]

    @property
    def ns(self) -> str:
        return self.lab.gateway_ns

    def listing(self) -> str:
        return nft(self.ns, "list", "table", "ip", TABLE) + nft(self.ns, "list", "table", "ip", USAGE)


@pytest.fixture
def services(lab):
    m1, m2 = lab.machine_addresses
    started: list[Service] = []
    try:
        for start, addr, port, tag in (
                (Service.start_tcp_echo, m1, 2222, "m1-ssh"),
                (Service.start_udp_echo, m1, 53, "m1-dns"),
                (Service.start_tcp_echo, m1, 5900, "m1-vnc0"),
                (Service.start_tcp_echo, m1, 5901, "m1-vnc1"),
                (Service.start_tcp_echo, m2, 22, "m2-ssh"),
                (Service.start_tcp_echo, m2, 8080, "m2-web")):
            started.append(start(lab.lab_ns, addr, port, tag=tag, report_peer=True))
        yield started
    finally:
        for s in started:
            s.stop()


def build_gateway(lab: Lab, masquerade: bool) -> Gateway:
    """labgate's two tables as its full render writes them, plus another system's table in the same namespace."""
    ext = ipaddress.IPv4Address(lab.external_address)
    m1, m2 = (ipaddress.IPv4Address(a) for a in lab.machine_addresses)
    client = ipaddress.IPv4Network(f"{lab.client_address}/32")
    rules = [
        ForwardRule(1, "tcp", ext, 4000, m1, 2222),
        ForwardRule(2, "udp", ext, 4000, m1, 53),                                  # same number, other protocol
        ForwardRule(3, "tcp", ext, 4010, m1, 5900, port_count=2),                  # a block: 4010-4011
        ForwardRule(4, "tcp", ext, 4020, m2, 22, allowed_sources=(client,)),       # only the first client
        ForwardRule(5, "tcp", ext, 5005, m2, 8080),                                # in the second range
    ]
    shape = GatewayShape(TABLE, ext, ((4000, 4100), (5000, 5010)), masquerade)
    nft(lab.gateway_ns, "-f", "-", stdin=render_gateway_table(shape, rules) + render_usage_table(
        shape, [r.id for r in rules]))
    foreign = (f"table ip other {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n"
               f"    tcp dport {FOREIGN_PORT} dnat ip to {m2}:8080\n  }}\n}}\n")
    nft(lab.gateway_ns, "-f", "-", stdin=foreign)
    return Gateway(lab, masquerade, shape, rules)


def assert_forwarding(gw: Gateway) -> None:
    """Real connections from the client namespace, checked forward by forward."""
    lab = gw.lab
    cli, ext = lab.client_ns, lab.external_address
    # What the lab machine sees as the source: the gateway's lab-side address when masquerading, else the client.
    seen = lab.gateway_lab_address if gw.masquerade else lab.client_address

    reply = tcp_request(cli, ext, 4000, "ssh", source=lab.client_address)
    assert tag_of(reply) == "m1-ssh" and peer_of(reply) == seen, reply
    reply = udp_request(cli, ext, 4000, "dns", source=lab.client_address)
    assert tag_of(reply) == "m1-dns" and peer_of(reply) == seen, reply
    for port, tag in ((4010, "m1-vnc0"), (4011, "m1-vnc1")):
        reply = tcp_request(cli, ext, port, "vnc", source=lab.client_address)
        assert tag_of(reply) == tag and peer_of(reply) == seen, (port, reply)
    reply = tcp_request(cli, ext, 5005, "web", source=lab.client_address)
    assert tag_of(reply) == "m2-web" and peer_of(reply) == seen, reply

    # allowed_sources: the first client passes, the second is dropped in the kernel.
    reply = tcp_request(cli, ext, 4020, "ok", source=lab.client_address)
    assert tag_of(reply) == "m2-ssh" and peer_of(reply) == seen, reply
    assert tcp_request(cli, ext, 4020, "no", source=lab.client_address2, timeout=1) is None

    # Another table's DNAT on a port outside labgate's ranges is never masqueraded by labgate.
    reply = tcp_request(cli, ext, FOREIGN_PORT, "other", source=lab.client_address)
    assert tag_of(reply) == "m2-web" and peer_of(reply) == lab.client_address, reply


def assert_reloadable(ns: str, text: str) -> None:
    """nft reads `text` back (checked with -c, which changes nothing); nothing in it is listed untyped."""
    untyped = [line.strip() for line in text.splitlines() if "invalid type" in line]
    assert not untyped, f"listed in a form nft cannot read back: {untyped}"
    nft(ns, "-c", "-f", "-", stdin=text)


@pytest.mark.parametrize("masquerade", [True, False], ids=["masquerade", "no-masquerade"])
def test_listed_tables_reload_to_the_same_tables_and_the_same_forwarding(lab, services, masquerade):
    gw = build_gateway(lab, masquerade)
    assert_forwarding(gw)

    # `nft list table` of each of labgate's tables: nft reads it back, and after the tables are deleted, loading
    # it gives back exactly the same tables, which forward exactly as before.
    saved = gw.listing()
    assert_reloadable(gw.ns, saved)
    assert ("masquerade" in saved) is masquerade
    nft(gw.ns, "delete", "table", "ip", TABLE)
    nft(gw.ns, "delete", "table", "ip", USAGE)
    assert tcp_request(lab.client_ns, lab.external_address, 4000, "gone", source=lab.client_address,
                       timeout=1) is None
    nft(gw.ns, "-f", "-", stdin=saved)
    assert gw.listing() == saved
    assert_forwarding(gw)

    # What operators do: the whole ruleset (labgate's tables and anyone else's) saved, flushed, loaded at boot.
    ruleset = nft(gw.ns, "list", "ruleset")
    assert_reloadable(gw.ns, ruleset)
    nft(gw.ns, "flush", "ruleset")
    assert nft(gw.ns, "list", "ruleset") == ""
    nft(gw.ns, "-f", "-", stdin=ruleset)
    assert nft(gw.ns, "list", "ruleset") == ruleset
    assert_forwarding(gw)

    # And labgate takes over a reloaded ruleset at start as it does any other: its full render applies on top.
    ids = [r.id for r in gw.rules]
    nft(gw.ns, "-f", "-", stdin=render_gateway_table(gw.shape, gw.rules) + render_usage_ensure(gw.shape, ids))
    assert_reloadable(gw.ns, nft(gw.ns, "list", "ruleset"))
    assert_forwarding(gw)


def test_port_ranges_given_overlapping_or_adjacent_load_as_one_interval(lab, services):
    """A named interval set refuses overlapping elements, which an anonymous set merged silently: ranges that
    overlap or touch still load, as merged intervals, and a forward at the edge of a range is masqueraded."""
    ext = ipaddress.IPv4Address(lab.external_address)
    m1 = ipaddress.IPv4Address(lab.machine_addresses[0])
    shape = GatewayShape(TABLE, ext, ((5000, 5010), (4000, 4050), (4051, 4100), (4090, 4095)), True)
    nft(lab.gateway_ns, "-f", "-", stdin=render_gateway_table(shape, [ForwardRule(1, "tcp", ext, 5010, m1, 2222)]))
    listed = nft(lab.gateway_ns, "list", "set", "ip", TABLE, "port_ranges")
    assert "elements = { 4000-4100, 5000-5010 }" in listed, listed
    reply = tcp_request(lab.client_ns, lab.external_address, 5010, "edge", source=lab.client_address)
    assert tag_of(reply) == "m1-ssh" and peer_of(reply) == lab.gateway_lab_address, reply
