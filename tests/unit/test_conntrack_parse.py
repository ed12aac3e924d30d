"""Reading `conntrack -E` lines (labgate.workers.connections.parse_event): the original direction gives the
client and the external port, the reply direction the real target, the mark the forward. Real events from real
traffic are tested in tests/kernel/test_usage_events.py."""

from __future__ import annotations

from labgate.workers.connections import parse_event


def test_parse_conntrack_new_line():
    line = ("[1795430874.505624]\t    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=198.51.100.2 dst=198.51.100.1 "
            "sport=45068 dport=4000 [UNREPLIED] src=10.9.0.5 dst=198.51.100.2 sport=22 dport=45068 mark=7 id=28719")
    ev = parse_event(line)
    assert ev is not None and (ev.protocol, ev.src_ip, ev.src_port, ev.dst_port, ev.target_ip, ev.target_port,
                               ev.mark) == ("tcp", "198.51.100.2", 45068, 4000, "10.9.0.5", 22, 7)
    assert parse_event("[DESTROY] tcp 6 src=1.2.3.4") is None
    assert parse_event("garbage") is None

