"""Conntrack over netlink (ctnetlink), in process: no `conntrack` child walking the table from user space.

Every call opens a NETLINK_NETFILTER socket in the calling thread's network namespace (run it from a
NamespaceWorker job: the socket, hence every entry it sees or deletes, belongs to that namespace) and closes it
before returning. Same raw style as nfnetlink.py: struct packing, no dependency.

What the gateway needs (the kernel side is net/netfilter/nf_conntrack_netlink.c):
- delete_marks / delete_blocks: IPCTNL_MSG_CT_DELETE with CTA_MARK and CTA_MARK_MASK and no tuple. Without a tuple
  the kernel flushes (ctnetlink_flush_conntrack) the namespace's entries matching a filter: (ct mark & mask) ==
  mark, walking its conntrack hash without copying anything out. The nfgenmsg version is NFNETLINK_V0, so the
  family filter is AF_UNSPEC (IPv4 and IPv6 entries alike; the family byte only counts with version 1). Both
  CTA_MARK and CTA_MARK_MASK are always sent: older kernels build the filter only when both are present (and
  would flush everything otherwise); kernels without CONFIG_NF_CONNTRACK_MARK refuse with EOPNOTSUPP. The flush
  answers with an ACK, not a count. Many flushes go in one write.
- dump (IPCTNL_MSG_CT_GET, NLM_F_DUMP, family AF_UNSPEC: every family), parsed into Connection (list_marked), or
  used to delete the entries of a scattered set of marks one by one by tuple and id (delete_dumped).
- list_marked_to: a dump with CTA_FILTER (Linux 5.8+) on the original destination address, so the kernel copies
  out only the entries to a gateway's external address (the stale-session check after a full sync); older
  kernels ignore the filter and the destination is checked again here.
- delete_connection: one entry by its original tuple, when it still carries the expected mark (a GET by tuple,
  then a DELETE by tuple + CTA_ID, so an entry re-created meanwhile under the same tuple is left alone).
- create_entries: IPCTNL_MSG_CT_NEW + NLM_F_CREATE (orig and reply tuple, timeout, mark; TCP ESTABLISHED), many
  per write, for tests and benchmarks that need a big table.

Errors raise OSError (errno from the kernel, with what was asked); a mark outside 1..2**32-1 raises ValueError.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator

from labgate.dataplane import nfnetlink

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NFNETLINK_V0 = 0

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLMSG_NOOP = 0x1
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_PROTOINFO = 4
CTA_TIMEOUT = 7
CTA_MARK = 8
CTA_ID = 12
CTA_MARK_MASK = 21
CTA_FILTER = 25                 # Linux 5.8+: a dump filtered by tuple fields in the kernel
CTA_FILTER_ORIG_FLAGS = 1
CTA_FILTER_F_IP_DST = 1 << 1    # compare the original tuple's destination address
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
TCP_CONNTRACK_ESTABLISHED = 3

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_NAMES = {number: name for name, number in PROTOCOLS.items()}
MAX_MARK = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("!I")
_RECV_SIZE = 1 << 18    # a dump part is at most 32 KiB; asking for more lets the kernel fill that much
_SEND_BATCH = 128       # requests per send(): each answer is an skb of its own (~1 KiB of receive buffer)
_RCVBUF = 1 << 22       # room for a whole batch of answers (SO_RCVBUFFORCE with CAP_NET_ADMIN, else capped)
SO_RCVBUFFORCE = 33
NETLINK_CAP_ACK = 10    # error answers without a copy of the request
SOL_NETLINK = 270


@dataclass(frozen=True)
class Connection:
    """A tracked TCP/UDP connection with a mark: its original tuple, and who answers it (the DNAT target)."""

    protocol: str
    src: str
    sport: int
    dst: str
    dport: int
    reply_src: str
    reply_sport: int
    mark: int


Tuple = tuple[str, str, int, str, int]  # (protocol, src, sport, dst, dport)


def check_mark(mark: object) -> int:
    """A forward's mark: an int in 1..2**32-1 (0 is every unmarked entry, never one forward's). Else ValueError."""
    if isinstance(mark, bool) or not isinstance(mark, int) or not 0 < mark <= MAX_MARK:
        raise ValueError(f"bad mark {mark!r}: a conntrack mark is an integer in 1..{MAX_MARK}")
    return mark


# --- building messages ----------------------------------------------------------------------------------------
def _attr(kind: int, payload: bytes) -> bytes:
    data = _ATTR.pack(4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _nested(kind: int, *children: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(children))


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _tuple_attr(kind: int, protocol: str, src: str, sport: int, dst: str, dport: int) -> bytes:
    family = _family(src)
    if _family(dst) != family:
        raise ValueError(f"{src} and {dst} are not of one address family")
    number = PROTOCOLS.get(protocol)
    if number is None:
        raise ValueError(f"bad protocol {protocol!r}: tcp or udp")
    for port in (sport, dport):
        if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise ValueError(f"bad port {port!r}")
    src_kind, dst_kind = (CTA_IP_V6_SRC, CTA_IP_V6_DST) if family == socket.AF_INET6 else (CTA_IP_V4_SRC,
                                                                                           CTA_IP_V4_DST)
    try:
        src_raw, dst_raw = socket.inet_pton(family, src), socket.inet_pton(family, dst)
    except OSError:
        raise ValueError(f"bad address {src!r} or {dst!r}") from None
    return _nested(kind,
                   _nested(CTA_TUPLE_IP, _attr(src_kind, src_raw), _attr(dst_kind, dst_raw)),
                   _nested(CTA_TUPLE_PROTO, _attr(CTA_PROTO_NUM, struct.pack("B", number)),
                           _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport)),
                           _attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport))))


def _message(msg_type: int, flags: int, seq: int, family: int, body: bytes) -> bytes:
    payload = struct.pack("=BBH", family, NFNETLINK_V0, 0) + body
    return _HEADER.pack(16 + len(payload), (NFNL_SUBSYS_CTNETLINK << 8) | msg_type, NLM_F_REQUEST | flags,
                        seq, 0) + payload


def mark_filter(mark: int, mask: int = MAX_MARK) -> bytes:
    """The attributes of a flush of every entry whose (mark & mask) == mark."""
    return _attr(CTA_MARK, struct.pack("!I", mark)) + _attr(CTA_MARK_MASK, struct.pack("!I", mask))


# --- reading answers ------------------------------------------------------------------------------------------
def _attrs(data, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in data[start:end]."""
    return nfnetlink.attributes(data, start, end, "conntrack netlink")


def _parse_tuple(data, start: int, end: int) -> tuple[int, str, int, str, int] | None:
    """(protocol number, src, sport, dst, dport) of a CTA_TUPLE_* payload."""
    proto = src = dst = None
    sport = dport = 0
    for kind, a, b in _attrs(data, start, end):
        if kind == CTA_TUPLE_IP:
            for k, x, y in _attrs(data, a, b):
                if k in (CTA_IP_V4_SRC, CTA_IP_V4_DST):
                    value = socket.inet_ntop(socket.AF_INET, bytes(data[x:y]))
                elif k in (CTA_IP_V6_SRC, CTA_IP_V6_DST):
                    value = socket.inet_ntop(socket.AF_INET6, bytes(data[x:y]))
                else:
                    continue
                if k in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = value
                else:
                    dst = value
        elif kind == CTA_TUPLE_PROTO:
            for k, x, _y in _attrs(data, a, b):
                if k == CTA_PROTO_NUM:
                    proto = data[x]
                elif k == CTA_PROTO_SRC_PORT:
                    sport = struct.unpack_from("!H", data, x)[0]
                elif k == CTA_PROTO_DST_PORT:
                    dport = struct.unpack_from("!H", data, x)[0]
    if proto is None or src is None or dst is None:
        return None
    return proto, src, sport, dst, dport


def _top(data, start: int, end: int) -> tuple[int, tuple[int, int] | None, tuple[int, int] | None, int | None]:
    """(mark, original tuple span, reply tuple span, id) of one entry message: its top-level attributes only, in
    one plain loop (a dump of 10,000 entries goes through here 10,000 times)."""
    mark = 0
    orig = reply = entry_id = None
    unpack = _ATTR.unpack_from
    while start + 4 <= end:
        length, kind = unpack(data, start)
        if length < 4:
            raise OSError(errno.EBADMSG, "malformed conntrack netlink attribute")
        kind &= NLA_TYPE_MASK
        if kind == CTA_MARK:
            mark = _U32.unpack_from(data, start + 4)[0]
        elif kind == CTA_TUPLE_ORIG:
            orig = (start + 4, start + length)
        elif kind == CTA_TUPLE_REPLY:
            reply = (start + 4, start + length)
        elif kind == CTA_ID:
            entry_id = _U32.unpack_from(data, start + 4)[0]
        start += (length + 3) & ~3
    return mark, orig, reply, entry_id


def parse_entry(data, start: int, end: int, *, marked_only: bool = True) -> Connection | None:
    """One IPCTNL_MSG_CT_NEW message (its attributes: data[start:end], after the nfgenmsg header) -> Connection;
    None unless TCP/UDP (and, with marked_only, a non-zero mark). Unmarked entries cost little: the tuples are
    only read once the mark is known."""
    mark, orig, reply, _id = _top(data, start, end)
    if (marked_only and not mark) or orig is None or reply is None:
        return None
    o, r = _parse_tuple(data, *orig), _parse_tuple(data, *reply)
    if o is None or r is None or o[0] not in _NAMES:
        return None
    return Connection(_NAMES[o[0]], o[1], o[2], o[3], o[4], r[1], r[2], mark)


def entry_mark(data, start: int, end: int) -> int:
    """The CTA_MARK of one entry message (0 when it has none)."""
    return _top(data, start, end)[0]


def mark_blocks(marks: Iterable[int]) -> list[tuple[int, int]]:
    """The fewest (value, mask) filters matching exactly these marks: (m & mask) == value for every mark m of
    the set and for no other. Consecutive ids (a batch) take few: 1000..2999 is 9 blocks, one mark is one."""
    ordered = sorted({check_mark(m) for m in marks})
    blocks: list[tuple[int, int]] = []
    i = 0
    while i < len(ordered):
        lo = hi = ordered[i]
        while i + 1 < len(ordered) and ordered[i + 1] == hi + 1:
            i += 1
            hi = ordered[i]
        i += 1
        while lo <= hi:
            size = lo & -lo              # the largest aligned block starting at lo ...
            while size > hi - lo + 1:    # ... that stays within the run
                size >>= 1
            blocks.append((lo, MAX_MARK & ~(size - 1)))
            lo += size
    return blocks


class ConntrackUnavailable(OSError):
    """The kernel offers no netfilter netlink here (no socket family): conntrack entries cannot be read or cut."""


def _error(code: int, what: str) -> OSError:
    return nfnetlink.os_error(code, f"{what}: {os.strerror(code)} (conntrack netlink)")


class CtnetlinkSocket:
    """One NETLINK_NETFILTER socket of the calling thread's namespace, for ctnetlink requests."""

    def __init__(self, *, timeout: float = 30.0) -> None:
        try:
            self.sock = nfnetlink.open_socket(timeout)
        except OSError as exc:
            if exc.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
                raise nfnetlink.os_error(exc.errno, "opening a netfilter netlink socket: "
                                         f"{os.strerror(exc.errno)}", ConntrackUnavailable) from None
            raise
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, _RCVBUF)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            try:
                self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            except OSError:
                pass  # before 4.3: errors quote the request, still within the buffer
        except OSError:
            self.sock.close()
            raise
        self._seq = int.from_bytes(os.urandom(3), "little") + 1
        self._buf = bytearray(_RECV_SIZE)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "CtnetlinkSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _receive(self) -> memoryview:
        n = self.sock.recv_into(self._buf)
        return memoryview(self._buf)[:n]

    def messages(self) -> Iterator[tuple[int, int, int, int, memoryview]]:
        """(type, flags, seq, payload offset, buffer) of each message received, forever (the caller stops)."""
        while True:
            data = self._receive()
            offset = 0
            while offset + 16 <= len(data):
                length, kind, flags, seq, _pid = _HEADER.unpack_from(data, offset)
                if length < 16 or offset + length > len(data):
                    raise OSError(errno.EBADMSG, "malformed conntrack netlink answer")
                yield kind, flags, seq, offset, data[:offset + length]
                offset += (length + 3) & ~3

    def request(self, msg_type: int, family: int, body: bytes, what: str, *, flags: int = 0,
                missing_ok: bool = False) -> list[tuple[memoryview, int, int]]:
        """Send one request with an ACK; return the entry messages answered before it, as (buffer, attributes
        start, end). ENOENT returns [] when missing_ok; any other error raises OSError."""
        seq = self.next_seq()
        self.sock.send(_message(msg_type, flags | NLM_F_ACK, seq, family, body))
        found: list[tuple[memoryview, int, int]] = []
        for kind, _flags, msg_seq, offset, data in self.messages():
            if msg_seq != seq:
                continue
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, offset + 16)[0]
                if code == 0:
                    return found
                if code == errno.ENOENT and missing_ok:
                    return []
                raise _error(code, what)
            if kind == NLMSG_DONE:
                return found
            if kind >> 8 == NFNL_SUBSYS_CTNETLINK:
                found.append((bytes(data), offset + 20, len(data)))  # bytes: the buffer is reused

    def dump(self, what: str = "listing conntrack entries", *, family: int = socket.AF_UNSPEC,
             body: bytes = b"") -> Iterator[tuple[memoryview, int, int]]:
        """Every entry of the namespace (all families; or those a filter in `body` selects), as (buffer,
        attributes start, end); the buffer is only valid until the next item."""
        seq = self.next_seq()
        self.sock.send(_message(IPCTNL_MSG_CT_GET, NLM_F_DUMP, seq, family, body))
        for kind, _flags, msg_seq, offset, data in self.messages():
            if msg_seq != seq:
                continue
            if kind == NLMSG_DONE:
                code = -struct.unpack_from("=i", data, offset + 16)[0] if len(data) >= offset + 20 else 0
                if code > 0:
                    raise _error(code, what)
                return
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, offset + 16)[0]
                if code:
                    raise _error(code, what)
                return
            if kind >> 8 == NFNL_SUBSYS_CTNETLINK:
                yield data, offset + 20, len(data)

    def send_all(self, messages: list[bytes], what: str, *, ignore: tuple[int, ...] = ()) -> int:
        """Send many requests (each with NLM_F_ACK) in one write; wait for every answer. Returns how many
        succeeded; raises OSError for the first failure (after reading every answer) unless its errno is in
        `ignore`."""
        if not messages:
            return 0
        seqs = {struct.unpack_from("=I", m, 8)[0] for m in messages}
        self.sock.send(b"".join(messages))
        ok = 0
        failure: OSError | None = None
        pending = set(seqs)
        for kind, _flags, msg_seq, offset, data in self.messages():
            if msg_seq not in pending or kind != NLMSG_ERROR:
                continue
            pending.discard(msg_seq)
            code = -struct.unpack_from("=i", data, offset + 16)[0]
            if code == 0:
                ok += 1
            elif failure is None and code not in ignore:
                failure = _error(code, what)
            if not pending:
                break
        if failure is not None:
            raise failure
        return ok


# --- what the gateway calls -----------------------------------------------------------------------------------
def delete_marks(marks: Iterable[int], *, mask: int = MAX_MARK, sock: CtnetlinkSocket | None = None) -> None:
    """Flush the entries (every family) with (mark & mask) == m, for each m: one kernel-side filtered flush per
    value, sent 128 per write. A flush walks the conntrack hash in the kernel (about 1.3 ms with 10,000 entries,
    nothing copied to user space); with an empty table it returns at once."""
    values = [check_mark(m) for m in marks]
    own = sock is None
    sock = sock or CtnetlinkSocket()
    try:
        for i in range(0, len(values), _SEND_BATCH):
            chunk = values[i:i + _SEND_BATCH]
            what = (f"deleting the conntrack entries of mark {chunk[0]}" if len(chunk) == 1 and mask == MAX_MARK
                    else f"deleting the conntrack entries of {len(chunk)} mark filters")
            sock.send_all([_message(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, sock.next_seq(), socket.AF_UNSPEC,
                                    mark_filter(m, mask)) for m in chunk], what)
    finally:
        if own:
            sock.close()


def delete_blocks(blocks: Iterable[tuple[int, int]], *, sock: CtnetlinkSocket | None = None) -> None:
    """Flush the entries matching each (value, mask) of mark_blocks()."""
    by_mask: dict[int, list[int]] = {}
    for value, mask in blocks:
        by_mask.setdefault(mask, []).append(value)
    own = sock is None
    sock = sock or CtnetlinkSocket()
    try:
        for mask, values in by_mask.items():
            delete_marks(values, mask=mask, sock=sock)
    finally:
        if own:
            sock.close()


def delete_mark(mark: int) -> None:
    """Flush every entry (IPv4 and IPv6) whose connection mark is `mark`."""
    delete_marks([mark])


def delete_dumped(marks: Iterable[int], *, sock: CtnetlinkSocket | None = None) -> int:
    """One dump, then delete each entry carrying one of these marks by its original tuple and id (exactly the
    entry listed; every protocol and family), 128 deletes per write. For a set of marks too scattered for a few
    flushes. Returns how many entries it deleted (one already gone is not counted)."""
    wanted = {check_mark(m) for m in marks}
    own = sock is None
    sock = sock or CtnetlinkSocket()
    try:
        targets: list[tuple[int, bytes]] = []
        for data, a, b in sock.dump():
            mark, orig, _reply, entry_id = _top(data, a, b)
            if mark not in wanted or orig is None:
                continue
            body = _nested(CTA_TUPLE_ORIG, bytes(data[orig[0]:orig[1]]))
            if entry_id is not None:
                body += _attr(CTA_ID, _U32.pack(entry_id))
            targets.append((data[a - 4], body))  # nfgen_family: the entry's own
        deleted = 0
        for i in range(0, len(targets), _SEND_BATCH):
            deleted += sock.send_all([_message(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, sock.next_seq(), family, body)
                                      for family, body in targets[i:i + _SEND_BATCH]],
                                     "deleting conntrack entries", ignore=(errno.ENOENT,))
        return deleted
    finally:
        if own:
            sock.close()


def live_marks(*, sock: CtnetlinkSocket | None = None) -> set[int]:
    """The non-zero marks carried by some entry now (one dump, reading only each entry's mark)."""
    own = sock is None
    sock = sock or CtnetlinkSocket()
    try:
        found = {entry_mark(data, a, b) for data, a, b in sock.dump()}
    finally:
        if own:
            sock.close()
    found.discard(0)
    return found


def list_marked() -> list[Connection]:
    """Every TCP/UDP entry with a non-zero mark (IPv4 and IPv6)."""
    with CtnetlinkSocket() as sock:
        return [c for c in (parse_entry(data, a, b) for data, a, b in sock.dump()) if c is not None]


def destination_filter(address: str) -> tuple[int, bytes]:
    """(family, request body) of a dump of the entries whose original destination is `address`: CTA_FILTER with
    the original tuple's destination, compared by the kernel while it walks the table (nothing else is copied
    out). Kernels before 5.8 ignore the filter and dump everything: callers check the destination again."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    kind = CTA_IP_V6_DST if ip.version == 6 else CTA_IP_V4_DST
    body = (_nested(CTA_TUPLE_ORIG, _nested(CTA_TUPLE_IP, _attr(kind, ip.packed)))
            + _nested(CTA_FILTER, _attr(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", CTA_FILTER_F_IP_DST))))
    return family, body


def list_marked_to(address: str) -> list[Connection]:
    """Every TCP/UDP entry with a non-zero mark whose original destination is `address` (a gateway's external
    address): the kernel filters by destination, so 10,000 unrelated entries cost a walk, not a copy and a parse
    each (~2.7 us an entry)."""
    ip = ipaddress.ip_address(address)
    # IPv6: the kernel (6.18 here) answered a destination-filtered dump with nothing for an entry that matched,
    # so IPv6 addresses are filtered here, from a full dump.
    family, body = destination_filter(address) if ip.version == 4 else (socket.AF_UNSPEC, b"")
    with CtnetlinkSocket() as sock:
        found = (parse_entry(data, a, b) for data, a, b in sock.dump(family=family, body=body))
        return [c for c in found if c is not None and ipaddress.ip_address(c.dst) == ip]


def list_entries() -> list[Connection]:
    """Every TCP/UDP entry, marked or not (tests and benchmarks)."""
    with CtnetlinkSocket() as sock:
        return [c for c in (parse_entry(data, a, b, marked_only=False) for data, a, b in sock.dump())
                if c is not None]


def count_entries() -> int:
    """How many entries the namespace tracks (every protocol)."""
    with CtnetlinkSocket() as sock:
        return sum(1 for _ in sock.dump())


def delete_connection(conn: Connection) -> bool:
    """Delete the entry with this original tuple if it carries conn.mark. False when there is none (or it now
    carries another mark: a new connection reusing the tuple is not ours to cut)."""
    check_mark(conn.mark)
    family = _family(conn.src)
    tuple_attr = _tuple_attr(CTA_TUPLE_ORIG, conn.protocol, conn.src, conn.sport, conn.dst, conn.dport)
    what = f"deleting conntrack entry {conn.protocol} {conn.src}:{conn.sport} -> {conn.dst}:{conn.dport}"
    with CtnetlinkSocket() as sock:
        found = sock.request(IPCTNL_MSG_CT_GET, family, tuple_attr, what, missing_ok=True)
        if not found:
            return False
        mark, _orig, _reply, entry_id = _top(*found[0])
        if mark != conn.mark:
            return False
        body = tuple_attr + (_attr(CTA_ID, _U32.pack(entry_id)) if entry_id is not None else b"")
        sock.request(IPCTNL_MSG_CT_DELETE, family, body, what, missing_ok=True)
        return True


def create_entries(entries: Iterable[Tuple], *, mark: int = 0, timeout: int = 600) -> int:
    """Insert entries (protocol, src, sport, dst, dport) in the calling thread's namespace, not NATed: the reply
    tuple is the original one reversed. TCP entries are ESTABLISHED. Sent 128 per write over one socket; an
    entry that exists already is updated (mark, timeout). Returns how many the kernel accepted; raises OSError
    (after the whole batch) when it refused some. For tests and benchmarks that need a big table."""
    if mark != 0:
        check_mark(mark)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= 0x7FFFFFFF:
        raise ValueError(f"bad timeout {timeout!r}")
    common = _attr(CTA_TIMEOUT, struct.pack("!I", timeout)) + (
        _attr(CTA_MARK, struct.pack("!I", mark)) if mark else b"")
    tcp_state = _nested(CTA_PROTOINFO, _nested(CTA_PROTOINFO_TCP, _attr(CTA_PROTOINFO_TCP_STATE,
                                                                        bytes([TCP_CONNTRACK_ESTABLISHED]))))
    created = 0
    with CtnetlinkSocket() as sock:
        batch: list[bytes] = []
        for protocol, src, sport, dst, dport in entries:
            body = (_tuple_attr(CTA_TUPLE_ORIG, protocol, src, sport, dst, dport)
                    + _tuple_attr(CTA_TUPLE_REPLY, protocol, dst, dport, src, sport) + common
                    + (tcp_state if protocol == "tcp" else b""))
            batch.append(_message(IPCTNL_MSG_CT_NEW, NLM_F_CREATE | NLM_F_ACK, sock.next_seq(), _family(src),
                                  body))
            if len(batch) >= _SEND_BATCH:
                created += sock.send_all(batch, "creating conntrack entries")
                batch = []
        created += sock.send_all(batch, "creating conntrack entries")
    return created


def unrelated_entries(count: int, *, network: str = "198.18.0.0/15", dst: str = "198.19.255.254",
                      dport: int = 9) -> Iterator[Tuple]:
    """`count` distinct TCP tuples from a benchmarking network (RFC 2544), to fill a table with."""
    hosts = ipaddress.ip_network(network)
    base = int(hosts.network_address) + 1
    for i in range(count):
        yield "tcp", str(ipaddress.ip_address(base + i // 50_000)), 10_000 + i % 50_000, dst, dport
