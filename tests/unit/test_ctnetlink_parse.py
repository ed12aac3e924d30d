"""Reading and writing ctnetlink messages (labgate.dataplane.ctnetlink) without a kernel: real answers captured from
one (a DNATed UDP flow with mark 7, an IPv6 one with mark 0xfffffffe, an unmarked TCP entry), multi-part dumps and
errors through a stand-in socket, the exact mark blocks of a batch cut, bad marks. The same calls against the real
kernel are in tests/kernel/test_ctnetlink.py."""

from __future__ import annotations

import errno
import random
import socket
import struct

import pytest

from labgate.dataplane import conntrack, ctnetlink
from labgate.dataplane.ctnetlink import Connection

# Whole messages (nlmsghdr + nfgenmsg + attributes) as Linux 6.x sent them in a dump (`conntrack -L -o extended`
# showed each line in the comment).
# ipv4 2 udp 17 29 src=10.0.0.2 dst=10.0.0.9 sport=40000 dport=4000 [UNREPLIED] src=127.0.0.1 dst=10.0.0.2
#   sport=5353 dport=40000 mark=7 use=1
UDP4_MARK7 = bytes.fromhex(
    "a4000000000102002e8ff700cd1f0000020000003400018014000180080001000a000002080002000a0000091c00028005000100110000"
    "00060002009c400000060003000fa000003400028014000180080001007f000001080002000a0000021c0002800500010011000000060002"
    "0014e90000060003009c40000008000300000001a8080008000000000708000c009fcf302808000b0000000001080007000000001d")
# ipv6 10 udp 17 29 src=fd00::2 dst=fd00::9 sport=40001 dport=4001 [UNREPLIED] src=fd00::2 dst=fd00::2
#   sport=5354 dport=40001 mark=4294967294 use=1
UDP6_MARK_MAX = bytes.fromhex(
    "d400000000010200c41d28005e2000000a0000004c0001802c00018014000300fd0000000000000000000000000000021400040"
    "0fd0000000000000000000000000000091c0002800500010011000000060002009c410000060003000fa100004c0002802c00018014000300"
    "fd00000000000000000000000000000214000400fd0000000000000000000000000000021c00028005000100110000000600020014ea0000"
    "060003009c41000008000300000001a808000800fffffffe08000c00adfde7fb08000b0000000001080007000000001d")
# ipv4 2 tcp 6 599 ESTABLISHED src=192.0.2.1 dst=192.0.2.2 sport=1111 dport=22 [UNREPLIED] src=192.0.2.2
#   dst=192.0.2.1 sport=22 dport=1111 mark=0 use=1
TCP4_UNMARKED = bytes.fromhex(
    "f0000000000102002e8ff700cd1f000002000000340001801400018008000100c000020108000200c00002021c0002800500010006000000"
    "06000200045700000600030000160000340002801400018008000100c000020208000200c00002011c000280050001000600000006000200"
    "0016000006000300045700000800030000000008080008000000000008000c0025e6291b08000b00000000010800070000000258300004802c"
    "000180050001000300000005000200000000000500030000000000060004000000000006000500000000001c00188008000100000000000800"
    "0200000000000800030000000000")


def parse(message: bytes, **kw) -> Connection | None:
    return ctnetlink.parse_entry(message, 20, len(message), **kw)


def test_a_real_dnat_entry_parses_like_the_conntrack_listing():
    assert parse(UDP4_MARK7) == Connection("udp", "10.0.0.2", 40000, "10.0.0.9", 4000, "127.0.0.1", 5353, 7)
    line = ("ipv4     2 udp      17 29 src=10.0.0.2 dst=10.0.0.9 sport=40000 dport=4000 [UNREPLIED] src=127.0.0.1 "
            "dst=10.0.0.2 sport=5353 dport=40000 mark=7 use=1")
    assert parse(UDP4_MARK7) == conntrack.parse_connection(line)
    assert ctnetlink.entry_mark(UDP4_MARK7, 20, len(UDP4_MARK7)) == 7


def test_ipv6_and_the_largest_mark():
    assert parse(UDP6_MARK_MAX) == Connection("udp", "fd00::2", 40001, "fd00::9", 4001, "fd00::2", 5354, 0xFFFFFFFE)


def test_unmarked_entries_are_skipped_unless_asked_for():
    assert parse(TCP4_UNMARKED) is None
    assert parse(TCP4_UNMARKED, marked_only=False) == Connection("tcp", "192.0.2.1", 1111, "192.0.2.2", 22,
                                                                 "192.0.2.2", 22, 0)


def test_a_built_tuple_reads_back():
    for args in (("tcp", "198.51.100.2", 45068, "198.51.100.1", 4000), ("udp", "2001:db8::1", 53, "2001:db8::2", 1)):
        orig = ctnetlink._tuple_attr(ctnetlink.CTA_TUPLE_ORIG, *args)
        reply = ctnetlink._tuple_attr(ctnetlink.CTA_TUPLE_REPLY, args[0], args[3], args[4], args[1], args[2])
        body = orig + reply + ctnetlink._attr(ctnetlink.CTA_MARK, struct.pack("!I", 42))
        message = ctnetlink._message(ctnetlink.IPCTNL_MSG_CT_NEW, 0, 1, ctnetlink._family(args[1]), body)
        assert parse(message) == Connection(*args, args[3], args[4], 42)


class FakeSocket:
    """Hands out prepared datagrams to recv_into, records what was sent."""

    def __init__(self, datagrams: list[bytes]):
        self.datagrams = list(datagrams)
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv_into(self, buf: bytearray) -> int:
        data = self.datagrams.pop(0)
        buf[:len(data)] = data
        return len(data)

    def close(self) -> None:
        pass


def fake(datagrams: list[bytes], seq: int = 100) -> ctnetlink.CtnetlinkSocket:
    sock = object.__new__(ctnetlink.CtnetlinkSocket)
    sock.sock = FakeSocket(datagrams)
    sock._seq = seq - 1  # the next request gets `seq`
    sock._buf = bytearray(1 << 16)
    return sock


def with_seq(message: bytes, seq: int, flags: int = ctnetlink.NLM_F_MULTI) -> bytes:
    length, kind, _flags, _seq, pid = struct.unpack_from("=IHHII", message)
    return struct.pack("=IHHII", length, kind, flags, seq, pid) + message[16:]


def done(seq: int, code: int = 0) -> bytes:
    return struct.pack("=IHHIIi", 20, ctnetlink.NLMSG_DONE, ctnetlink.NLM_F_MULTI, seq, 0, code)


def error(seq: int, code: int) -> bytes:
    return struct.pack("=IHHIIi", 36, ctnetlink.NLMSG_ERROR, 0, seq, 0, -code) + b"\0" * 16


def test_a_dump_in_several_parts_ends_at_done():
    parts = [with_seq(UDP4_MARK7, 100) + with_seq(TCP4_UNMARKED, 100),
             with_seq(UDP4_MARK7, 99),  # another request's answer: not ours
             with_seq(UDP6_MARK_MAX, 100) + done(100)]
    sock = fake(parts)
    found = [ctnetlink.parse_entry(data, a, b) for data, a, b in sock.dump()]
    assert [c.mark if c else None for c in found] == [7, None, 0xFFFFFFFE]
    request = sock.sock.sent[0]
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", request)
    assert (kind, flags & ctnetlink.NLM_F_DUMP, seq, request[16]) == (
        ctnetlink.NFNL_SUBSYS_CTNETLINK << 8 | ctnetlink.IPCTNL_MSG_CT_GET, ctnetlink.NLM_F_DUMP, 100,
        socket.AF_UNSPEC)


def test_a_refused_dump_raises_oserror_with_the_reason():
    with pytest.raises(OSError, match="listing conntrack entries: Operation not permitted") as info:
        list(fake([error(100, errno.EPERM)]).dump())
    assert info.value.errno == errno.EPERM
    with pytest.raises(OSError, match="Interrupted"):
        list(fake([with_seq(UDP4_MARK7, 100) + done(100, -errno.EINTR)]).dump())


def test_the_mark_flush_request_carries_mark_and_mask_and_no_tuple():
    sock = fake([error(100, 0)])
    ctnetlink.delete_marks([7], sock=sock)
    request = sock.sock.sent[0]
    _length, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", request)
    family, version, _res = struct.unpack_from("=BBH", request, 16)
    assert kind == ctnetlink.NFNL_SUBSYS_CTNETLINK << 8 | ctnetlink.IPCTNL_MSG_CT_DELETE
    assert flags & ctnetlink.NLM_F_ACK and (family, version) == (socket.AF_UNSPEC, 0)  # every family
    attrs = {k: bytes(request[a:b]) for k, a, b in ctnetlink._attrs(request, 20, len(request))}
    assert attrs == {ctnetlink.CTA_MARK: struct.pack("!I", 7), ctnetlink.CTA_MARK_MASK: b"\xff\xff\xff\xff"}


def test_a_refused_flush_raises():
    with pytest.raises(OSError, match="mark 7: Operation not supported"):
        ctnetlink.delete_marks([7], sock=fake([error(100, errno.EOPNOTSUPP)]))


@pytest.mark.parametrize("bad", [0, -1, 2 ** 32, True, "7", 7.0, None])
def test_bad_marks_are_refused_before_anything_is_sent(bad):
    with pytest.raises(ValueError, match="bad mark"):
        conntrack.delete_by_marks([5, bad])
    with pytest.raises(ValueError, match="bad mark"):
        ctnetlink.mark_blocks([bad])
    sock = fake([])
    with pytest.raises(ValueError):
        ctnetlink.delete_marks([5, bad], sock=sock)
    assert sock.sock.sent == []


def test_mark_blocks_match_exactly_the_marks():
    assert ctnetlink.mark_blocks([7]) == [(7, 0xFFFFFFFF)]
    assert ctnetlink.mark_blocks([4, 5, 6, 7]) == [(4, 0xFFFFFFFC)]
    assert len(ctnetlink.mark_blocks(range(1000, 3000))) == 9
    assert ctnetlink.mark_blocks([0xFFFFFFFF]) == [(0xFFFFFFFF, 0xFFFFFFFF)]
    rng = random.Random(7)
    for _ in range(200):
        marks = set(rng.sample(range(1, 300), rng.randint(1, 120)))
        blocks = ctnetlink.mark_blocks(marks)
        covered = {m for m in range(0, 512) if any(m & mask == value for value, mask in blocks)}
        assert covered == marks
        assert all(value & ~mask & 0xFFFFFFFF == 0 for value, mask in blocks)
