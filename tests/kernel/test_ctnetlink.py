"""Cutting sessions over ctnetlink (labgate.dataplane.ctnetlink, conntrack.delete_by_marks) against the real kernel,
each test in namespaces of its own (never the host's conntrack table): a deleted forward's sessions are cut while
10,000 unrelated entries stay, the dump reads what `conntrack -L` shows, batch cuts remove exactly their marks (both
the flush and the dump path), bad marks cut nothing. Speed is measured in bench/, not here."""

from __future__ import annotations

import dataclasses
import random
import subprocess

import pytest

from labgate.dataplane import conntrack, ctnetlink
from labgate.dataplane.ctnetlink import Connection
from labgate.dataplane.kernel import KernelError, NamespaceKernel
from labgate.lab import Service, TcpSession, in_netns, netns_exec, remove_namespace, udp_request
from tests.conftest import make_settings
from tests.harness import database_url, running_server
from tests.kernel.conftest import gateway_for

pytestmark = pytest.mark.kernel

UNRELATED = "198.18."  # ctnetlink.unrelated_entries draws its sources from 198.18.0.0/15



def entries_in(ns: str) -> list[Connection]:
    return in_netns(ns, ctnetlink.list_entries)


def marks_in(ns: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for conn in entries_in(ns):
        counts[conn.mark] = counts.get(conn.mark, 0) + 1
    return counts


def unrelated_count(ns: str) -> int:
    return sum(1 for c in entries_in(ns) if c.src.startswith(UNRELATED))


def test_deleting_a_forward_cuts_its_sessions_and_keeps_10000_unrelated_entries(lab, tmp_path):
    m1 = lab.machine_addresses[0]
    settings = make_settings(database_url(tmp_path, "lg.db"), dataplane="nft", gateways=[gateway_for(lab)])
    with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"), running_server(settings) as srv, \
            srv.client(srv.token("alice")) as c:
        cut = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22}).json()
        kept = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22}).json()
        assert in_netns(lab.gateway_ns, lambda: ctnetlink.create_entries(ctnetlink.unrelated_entries(10_000))) \
            == 10_000
        # Marks next to the cut one, and one sharing its low bits: an exact filter leaves them all.
        near = [cut["id"] + 1_000_000, cut["id"] | 0x8000_0000]
        for i, mark in enumerate(near):
            in_netns(lab.gateway_ns, lambda: ctnetlink.create_entries(
                [("udp", "198.19.0.1", 2000 + i, "198.19.0.2", 53)], mark=mark))
        with TcpSession.open(lab.client_ns, lab.external_address, cut["external_port"]) as s1, \
                TcpSession.open(lab.client_ns, lab.external_address, cut["external_port"]) as s2, \
                TcpSession.open(lab.client_ns, lab.external_address, kept["external_port"]) as sk:
            assert s1.exchange("a") == "vm1:a" and s2.exchange("b") == "vm1:b" and sk.exchange("c") == "vm1:c"
            before = marks_in(lab.gateway_ns)
            assert before.get(cut["id"]) == 2 and before.get(kept["id"]) == 1, before  # the check below can fail

            assert c.delete(f"/api/v1/forwards/{cut['id']}").status_code == 204
            after = marks_in(lab.gateway_ns)
            assert cut["id"] not in after, after                    # its entries are gone ...
            assert s1.exchange("after") is None and s2.exchange("after") is None  # ... so its sessions stop
            assert sk.exchange("still") == "vm1:still"             # the other forward's session works
            assert after.get(kept["id"]) == 1
            assert all(after.get(mark) == 1 for mark in near), after
        assert unrelated_count(lab.gateway_ns) == 10_000


def conntrack_listing(ns: str) -> set[Connection]:
    proc = netns_exec(ns, ["conntrack", "-L", "-o", "extended"], check=True)
    return {c for c in map(conntrack.parse_connection, proc.stdout.splitlines()) if c is not None}


def test_the_dump_reads_what_conntrack_lists(lab, tmp_path):
    m1, m2 = lab.machine_addresses[:2]
    settings = make_settings(database_url(tmp_path, "lg.db"), dataplane="nft", gateways=[gateway_for(lab)])
    with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"), Service.start_udp_echo(lab.lab_ns, m2, 53), \
            running_server(settings) as srv, srv.client(srv.token("alice")) as c:
        tcp = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22}).json()
        udp = c.post("/api/v1/forwards", json={"target_address": m2, "target_port": 53, "protocol": "udp"}).json()
        in_netns(lab.gateway_ns, lambda: ctnetlink.create_entries(
            [("tcp", "192.0.2.1", 1111, "192.0.2.2", 22), ("udp", "2001:db8::1", 5353, "2001:db8::2", 53)],
            mark=0xFFFFFFFF))
        in_netns(lab.gateway_ns, lambda: ctnetlink.create_entries([("tcp", "192.0.2.1", 1112, "192.0.2.2", 22)]))
        with TcpSession.open(lab.client_ns, lab.external_address, tcp["external_port"]) as s:
            assert s.exchange("x") == "vm1:x"
            assert udp_request(lab.client_ns, lab.external_address, udp["external_port"], "y")
            dumped = in_netns(lab.gateway_ns, ctnetlink.list_marked)
            listed = conntrack_listing(lab.gateway_ns)
        assert sorted(dumped, key=repr) == sorted(listed, key=repr)
        assert len(dumped) == len(set(dumped)) == 4
        by_mark = {conn.mark: conn for conn in dumped}
        session = by_mark[tcp["id"]]
        assert (session.protocol, session.src, session.dst, session.dport, session.reply_src,
                session.reply_sport) == ("tcp", lab.client_address, lab.external_address, tcp["external_port"], m1, 22)
        assert (by_mark[udp["id"]].protocol, by_mark[udp["id"]].reply_src) == ("udp", m2)
        assert Connection("udp", "2001:db8::1", 5353, "2001:db8::2", 53, "2001:db8::2", 53, 0xFFFFFFFF) in dumped


def test_bad_marks_are_refused_and_cut_nothing(netns):
    in_netns(netns, lambda: ctnetlink.create_entries([("tcp", "192.0.2.1", 1, "192.0.2.2", 22),
                                                      ("tcp", "2001:db8::1", 1, "2001:db8::2", 22)], mark=7))
    in_netns(netns, lambda: ctnetlink.create_entries([("udp", "192.0.2.1", 2, "192.0.2.2", 53)]))
    for bad in ([0], [7, 2 ** 32], [-1], ["7"], [7, None]):
        with pytest.raises(ValueError, match="bad mark"):
            in_netns(netns, lambda: conntrack.delete_by_marks(bad))
    with pytest.raises(ValueError, match="bad mark"):
        in_netns(netns, lambda: ctnetlink.create_entries([("tcp", "192.0.2.1", 3, "192.0.2.2", 22)], mark=2 ** 32))
    kernel = NamespaceKernel(netns)
    try:
        with pytest.raises(KernelError, match="bad mark"):
            kernel.cut([0])
        assert marks_in(netns) == {7: 2, 0: 1}  # nothing was cut, nothing was added
        kernel.cut([7])                         # IPv4 and IPv6 alike
        assert marks_in(netns) == {0: 1}
    finally:
        kernel.close()


@pytest.mark.parametrize("layout", ["consecutive", "scattered"])
def test_a_batch_cut_removes_exactly_its_marks(netns, layout):
    if layout == "consecutive":
        marks = list(range(1000, 3000))
        neighbours = [999, 3000, 3001, 1000 | 0x8000_0000]
    else:
        rng = random.Random(11)
        marks = sorted(rng.sample(range(1, 100_000), 2000))
        neighbours = sorted(set(rng.sample(range(1, 100_000), 40)) - set(marks))
    # The two ways delete_by_marks works are both taken: a few exact flushes, or one dump and deletes by tuple.
    assert (len(ctnetlink.mark_blocks(marks)) <= conntrack.FLUSH_LIMIT) == (layout == "consecutive")
    live = marks[::50]

    def fill() -> None:
        ctnetlink.create_entries(ctnetlink.unrelated_entries(10_000))
        for i, mark in enumerate(live):
            ctnetlink.create_entries([("tcp", "10.1.0.1", 1000 + i, "10.1.0.2", 22),
                                      ("udp", "fd00::1", 1000 + i, "fd00::2", 53)], mark=mark)
        for i, mark in enumerate(neighbours):
            ctnetlink.create_entries([("tcp", "10.2.0.1", 1000 + i, "10.2.0.2", 22)], mark=mark)

    in_netns(netns, fill)
    before = marks_in(netns)
    assert all(before.get(mark) == 2 for mark in live) and before.get(0) == 10_000
    kernel = NamespaceKernel(netns)
    try:
        kernel.cut(marks)
    finally:
        kernel.close()
    assert marks_in(netns) == {0: 10_000, **{mark: 1 for mark in neighbours}}


def test_delete_connection_cuts_one_entry_only_while_it_carries_the_mark(netns):
    one = Connection("tcp", "192.0.2.1", 1000, "192.0.2.2", 22, "192.0.2.2", 22, 5)
    other = Connection("tcp", "192.0.2.1", 1001, "192.0.2.2", 22, "192.0.2.2", 22, 5)
    in_netns(netns, lambda: ctnetlink.create_entries([(c.protocol, c.src, c.sport, c.dst, c.dport)
                                                      for c in (one, other)], mark=5))
    wrong_mark = dataclasses.replace(one, mark=6)
    assert in_netns(netns, lambda: ctnetlink.delete_connection(wrong_mark)) is False
    assert set(in_netns(netns, ctnetlink.list_marked)) == {one, other}
    kernel = NamespaceKernel(netns)
    try:
        kernel.cut_connection(one)
        assert kernel.connections() == [other]
        kernel.cut_connection(one)  # gone already: no error
    finally:
        kernel.close()


def test_cuts_keep_working_on_the_kept_socket_and_after_the_namespace_is_recreated(netns):
    """NamespaceKernel keeps one ctnetlink socket for its cuts (closing one per cut cost ~11 ms in a busy server):
    every cut on it still removes its mark, a failed cut leaves the next one working, and a re-created namespace
    gets a socket of its own (the old one would flush the old namespace's table)."""
    kernel = NamespaceKernel(netns)
    try:
        for round_ in range(5):
            mark = 100 + round_
            in_netns(netns, lambda: ctnetlink.create_entries(
                [("tcp", "10.3.0.1", 2000 + round_, "10.3.0.2", 22)], mark=mark))
            in_netns(netns, lambda: ctnetlink.create_entries(
                [("udp", "10.3.0.1", 3000 + round_, "10.3.0.2", 53)], mark=mark + 1000))
            kernel.cut([mark])
            assert mark not in marks_in(netns) and marks_in(netns).get(mark + 1000) == 1
        with pytest.raises(KernelError, match="bad mark"):
            kernel.cut([2 ** 32])
        kernel.cut([1100])
        assert 1100 not in marks_in(netns)

        remove_namespace(netns)
        subprocess.run(["ip", "netns", "add", netns], check=True)
        in_netns(netns, lambda: ctnetlink.create_entries([("tcp", "10.4.0.1", 4000, "10.4.0.2", 22)], mark=200))
        kernel.cut([200])
        assert marks_in(netns) == {}
    finally:
        kernel.close()


def test_a_dump_filtered_by_destination_lists_exactly_the_marked_entries_to_that_address(netns):
    ext = "203.0.113.7"

    def fill() -> None:
        ctnetlink.create_entries(ctnetlink.unrelated_entries(3_000))             # elsewhere, no mark
        ctnetlink.create_entries([("tcp", "198.51.100.1", 1000 + i, ext, 4000 + i) for i in range(5)], mark=11)
        ctnetlink.create_entries([("udp", "198.51.100.2", 2000, ext, 4100)], mark=12)
        ctnetlink.create_entries([("tcp", "198.51.100.3", 3000, ext, 4200)])     # to ext, but no mark
        ctnetlink.create_entries([("tcp", "198.51.100.4", 3001, "203.0.113.8", 4000)], mark=13)  # marked, elsewhere
        ctnetlink.create_entries([("tcp", "fd00::1", 3002, "fd00::7", 4000)], mark=14)

    in_netns(netns, fill)
    everything = in_netns(netns, ctnetlink.list_marked)
    to_ext = in_netns(netns, lambda: ctnetlink.list_marked_to(ext))
    assert sorted((c.mark, c.sport) for c in to_ext) == [(11, 1000 + i) for i in range(5)] + [(12, 2000)]
    assert set(to_ext) == {c for c in everything if c.dst == ext}
    assert {c.mark for c in in_netns(netns, lambda: ctnetlink.list_marked_to("fd00::7"))} == {14}
    assert in_netns(netns, lambda: ctnetlink.list_marked_to("192.0.2.99")) == []
    kernel = NamespaceKernel(netns)
    try:
        assert set(kernel.connections(to=ext)) == set(to_ext)
    finally:
        kernel.close()
