"""Reading `conntrack -E` lines (labgate.workers.connections.parse_event): the original direction gives the
client and the external port, the reply direction the real target, the mark the forward. Real events from real
traffic are tested in tests/kernel/test_usage_events.py."""

from __future__ import annotations

from labgate.workers.connections import parse_event


def test_parse_conntrack_new_line():
    line = ("[1795430874.505624]\t    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=198.51.100.2 dst=198.51.100.1 "
            "sport=45068 dport=4000 [UNREPLIED] src=10.9.0.5 dst=198.51.100.2 sport=22 dport=45068 mark=7 id=28719")
    ev = parse_event(line)
    assert ev is not None and (ev.protocol, ev.src, ev.sport, ev.dport, ev.reply_src, ev.reply_sport,
                               ev.mark) == ("tcp", "198.51.100.2", 45068, 4000, "10.9.0.5", 22, 7)
    assert parse_event("[DESTROY] tcp 6 src=1.2.3.4") is None
    assert parse_event("garbage") is None


def test_parse_a_conntrack_listing_line():
    from labgate.dataplane.conntrack import Connection, parse_connection

    line = ("ipv4     2 tcp      6 431999 ESTABLISHED src=198.51.100.2 dst=198.51.100.1 sport=45068 dport=4000 "
            "src=10.9.0.5 dst=198.51.100.2 sport=22 dport=45068 [ASSURED] mark=7 use=1")
    assert parse_connection(line) == Connection("tcp", "198.51.100.2", 45068, "198.51.100.1", 4000, "10.9.0.5", 22, 7)
    assert parse_connection(line.replace("mark=7", "mark=0")) is None  # not one of labgate's
    assert parse_connection("ipv4 2 icmp 1 29 src=1.2.3.4 dst=5.6.7.8 type=8 code=0 id=1 mark=7") is None
