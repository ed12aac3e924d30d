"""Read a counter set's elements straight from the kernel: one NFT_MSG_GETSETELEM dump, parsed as it arrives.

`nft -j list set` (libnftables) first fills its whole cache, then builds JSON, then Python parses it: at 50,000
elements that is seconds and 100-200 MiB of peak memory for what the kernel sends as ~100 netlink messages of
32 KiB. Here those messages go, one recv() at a time, into one reused buffer and are walked in place; the result
dict is the only thing that grows.

Same raw style as nfnetlink.py (struct packing, stdlib only). The socket is opened in the calling thread's
network namespace (run it from a NamespaceWorker job) and closed before returning.

What the kernel sends (net/netfilter/nf_tables_api.c, nf_tables_dump_set; attribute numbers from
include/uapi/linux/netfilter/nf_tables.h): NFT_MSG_NEWSETELEM messages with NLM_F_MULTI, each
  nfgenmsg, NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET,
  NFTA_SET_ELEM_LIST_ELEMENTS { NFTA_LIST_ELEM { NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE },
                                                 NFTA_SET_ELEM_EXPR { NFTA_EXPR_NAME "counter",
                                                                      NFTA_EXPR_DATA { NFTA_COUNTER_BYTES,
                                                                                       NFTA_COUNTER_PACKETS } } }, ... }
then NLMSG_DONE. A set with several per-element expressions sends NFTA_SET_ELEM_EXPRESSIONS { NFTA_LIST_ELEM
{expression}, ... } instead of NFTA_SET_ELEM_EXPR. Counters are big-endian u64; a `type mark` key is 4 bytes in
host byte order (nft's mark type is host-endian). A missing table or set answers NLMSG_ERROR ENOENT before any
element. A dump that overlapped a ruleset change carries NLM_F_DUMP_INTR: it is started again.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from labgate.dataplane.nfnetlink import attributes, open_socket, os_error

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NFNETLINK_V0 = 0
NFPROTO_IPV4 = 2

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLMSG_NOOP = 0x1
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_TYPE_MASK = 0x3FFF

NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_FLAGS = 3
NFTA_SET_ELEM_EXPR = 7
NFTA_SET_ELEM_EXPRESSIONS = 11
NFT_SET_ELEM_CATCHALL = 0x2
NFTA_DATA_VALUE = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2

_HEADER = struct.Struct("=IHHII")   # nlmsghdr
_NFGENMSG_SIZE = 4
_ATTR = struct.Struct("=HH")        # nlattr
_U32 = struct.Struct("=I")          # a mark key: host byte order
_BE32 = struct.Struct("!I")         # NLA_U32 in nf_tables: big-endian
_BE64 = struct.Struct("!Q")
_ERRNO = struct.Struct("=i")
_COUNTER = b"counter\0"
_RECV_SIZE = 1 << 16     # a dump part is at most 32 KiB (netlink caps it); one buffer, reused for every part
_RCVBUF = 1 << 20
_DUMP_ATTEMPTS = 5

Counters = dict[int, tuple[int, int]]


class DumpInterrupted(Exception):
    """The ruleset changed while the kernel was dumping (NLM_F_DUMP_INTR): what arrived may be inconsistent."""


def read_counter_set(table: str, set_name: str, *, family: int = NFPROTO_IPV4, timeout: float = 30.0,
                     nonzero: bool = False) -> Counters:
    """{mark: (packets, bytes)} of every element of counter set SET_NAME of TABLE (a `type mark; counter;` set),
    as nft's JSON listing of the set gives it; an element without a counter counts (0, 0). With `nonzero`, the
    elements whose counters are both zero are left out (an idle forward costs no object).

    Raises OSError: ENOENT when the table or set does not exist, any other errno the kernel answers, EINTR when
    every attempt overlapped a ruleset change, or a timeout. Raises ValueError for a set whose keys are not marks."""
    for _ in range(_DUMP_ATTEMPTS):
        try:
            return _dump_once(table, set_name, family, timeout, nonzero)
        except DumpInterrupted:
            continue
    raise os_error(errno.EINTR, f"set {table} {set_name} changed during each of {_DUMP_ATTEMPTS} dumps")


def build_request(table: str, set_name: str, family: int, seq: int) -> bytes:
    body = (struct.pack("=BBH", family, NFNETLINK_V0, 0)
            + _attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
            + _attr(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0"))
    return _HEADER.pack(_HEADER.size + len(body), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
                        NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def _attr(kind: int, payload: bytes) -> bytes:
    data = _ATTR.pack(4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _dump_once(table: str, set_name: str, family: int, timeout: float, nonzero: bool = False) -> Counters:
    seq = int.from_bytes(os.urandom(4), "little") or 1
    out: Counters = {}
    buf = bytearray(_RECV_SIZE)
    with open_socket(timeout) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        except OSError:
            pass
        sock.send(build_request(table, set_name, family, seq))
        try:
            while True:
                n = sock.recv_into(buf)
                if parse_dump_part(buf, n, seq, out, what=f"set {table} {set_name}", nonzero=nonzero):
                    return out
        except socket.timeout:
            raise os_error(errno.ETIMEDOUT,
                           f"no complete answer for set {table} {set_name} in {timeout} s") from None


def parse_dump_part(buf, length: int, seq: int, out: Counters, *, what: str = "set", nonzero: bool = False) -> bool:
    """Add the elements of one received datagram (buf[:length]) to OUT; True once the dump is complete.
    Messages of other sequence numbers are ignored."""
    offset = 0
    header = _HEADER.unpack_from
    while offset + 16 <= length:
        msg_len, kind, flags, msg_seq, _pid = header(buf, offset)
        if msg_len < 16 or offset + msg_len > length:
            raise os_error(errno.EBADMSG, f"malformed netlink answer for {what}")
        if msg_seq == seq:
            if flags & NLM_F_DUMP_INTR:
                raise DumpInterrupted(what)
            if kind == NLMSG_ERROR:
                code = -_ERRNO.unpack_from(buf, offset + 16)[0] if msg_len >= 20 else errno.EBADMSG
                if code == 0:
                    return True
                raise os_error(code, f"{os.strerror(code)}: {what}")
            if kind == NLMSG_DONE:
                code = -_ERRNO.unpack_from(buf, offset + 16)[0] if msg_len >= 20 else 0
                if code > 0:
                    raise os_error(code, f"{os.strerror(code)}: {what}")
                return True
            if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM:
                _parse_setelem_message(buf, offset + 16 + _NFGENMSG_SIZE, offset + msg_len, out, nonzero)
        offset += (msg_len + 3) & ~3
    return False


def _parse_setelem_message(buf, pos: int, end: int, out: Counters, nonzero: bool) -> None:
    for kind, a, b in attributes(buf, pos, end):
        if kind == NFTA_SET_ELEM_LIST_ELEMENTS:
            for inner, c, d in attributes(buf, a, b):
                if inner == NFTA_LIST_ELEM:
                    _parse_element(buf, c, d, out, nonzero)


def _parse_element(buf, pos: int, end: int, out: Counters, nonzero: bool) -> None:
    key = None
    counter = (0, 0)
    for kind, a, b in attributes(buf, pos, end):
        if kind == NFTA_SET_ELEM_KEY:
            key = _parse_key(buf, a, b)
        elif kind == NFTA_SET_ELEM_EXPR:
            counter = _parse_expr(buf, a, b) or counter
        elif kind == NFTA_SET_ELEM_EXPRESSIONS:
            for inner, c, d in attributes(buf, a, b):
                found = _parse_expr(buf, c, d) if inner == NFTA_LIST_ELEM else None
                if found is not None:
                    counter = found
        elif kind == NFTA_SET_ELEM_FLAGS and b - a >= 4:
            if _BE32.unpack_from(buf, a)[0] & NFT_SET_ELEM_CATCHALL:
                return  # the catch-all element has no key: no forward (nft's JSON shows it as "*")
    if key is not None and (counter != (0, 0) or not nonzero):
        out[key] = counter


def _parse_key(buf, pos: int, end: int) -> int | None:
    for kind, a, b in attributes(buf, pos, end):
        if kind == NFTA_DATA_VALUE:
            if b - a != 4:
                raise ValueError(f"set key of {b - a} bytes: not a set of marks")
            return _U32.unpack_from(buf, a)[0]
    return None


def _parse_expr(buf, pos: int, end: int) -> tuple[int, int] | None:
    """(packets, bytes) if this expression is a counter, else None."""
    is_counter = False
    data = None
    for kind, a, b in attributes(buf, pos, end):
        if kind == NFTA_EXPR_NAME:
            is_counter = bytes(buf[a:b]).rstrip(b"\0") == b"counter"
        elif kind == NFTA_EXPR_DATA:
            data = (a, b)
    if not is_counter:
        return None
    packets = nbytes = 0
    for kind, a, b in attributes(buf, *data) if data is not None else ():
        if kind == NFTA_COUNTER_BYTES and b - a >= 8:
            nbytes = _BE64.unpack_from(buf, a)[0]
        elif kind == NFTA_COUNTER_PACKETS and b - a >= 8:
            packets = _BE64.unpack_from(buf, a)[0]
    return packets, nbytes
