"""Ask the kernel about a table without listing its sets: what the drift check needs.

nft 1.0.6 fills its whole cache before answering even `get element` or a terse `list table` (about 1-2 s at 50,000
elements), but the kernel answers these requests in microseconds, over a netfilter netlink socket opened in the
calling thread's network namespace (run it from a NamespaceWorker), for tables of family ip:
- element_exists: one NFT_MSG_GETSETELEM for one key;
- table_shape: {chain: number of rules}, from NFT_MSG_GETTABLE (does it exist), an NFT_MSG_GETCHAIN dump (the
  kernel filters it by family only: chains of other tables are skipped here) and an NFT_MSG_GETRULE dump filtered
  by NFTA_RULE_TABLE in the kernel. Rules name their sets; no element is ever listed.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Iterator

_NLA = struct.Struct("=HH")  # nlattr: length, type

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE = 1
NFT_MSG_NEWCHAIN = 3
NFT_MSG_GETCHAIN = 4
NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFT_MSG_GETSETELEM = 13
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_TYPE_MASK = 0x3FFF
NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_NAME = 3
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFPROTO_IPV4 = 2
NLA_F_NESTED = 0x8000
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_DATA_VALUE = 1


def os_error(code: int, message: str, kind: type[OSError] = OSError) -> OSError:
    """An OSError carrying errno `code` whose text is just `message` (no "[Errno N]" in front)."""
    exc = kind(message)
    exc.errno = code
    return exc


def attributes(data, start: int, end: int, what: str = "netlink") -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in data[start:end] (nested ones: call again on a
    payload). A length below 4 raises OSError EBADMSG."""
    unpack = _NLA.unpack_from
    while start + 4 <= end:
        length, kind = unpack(data, start)
        if length < 4:
            raise os_error(errno.EBADMSG, f"malformed {what} attribute")
        yield kind & 0x3FFF, start + 4, start + length
        start += (length + 3) & ~3


def open_socket(timeout: float) -> socket.socket:
    """A bound NETLINK_NETFILTER socket of the calling thread's namespace. Running out of descriptors says so
    (as nft.py does before calling libnftables)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise os_error(exc.errno, "too few file descriptors free to open a netlink socket "
                                      f"({os.strerror(exc.errno)})") from None
        raise
    try:
        sock.settimeout(timeout)
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _nested(kind: int, *children: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(children))


def element_exists(table: str, set_name: str, key: bytes, *, timeout: float = 5.0) -> bool:
    """True if the element exists, False if the kernel says it does not (or the set/table is missing).
    Raises OSError when the kernel cannot be asked."""
    request_body = (struct.pack("=BBH", NFPROTO_IPV4, 0, 0)
                    + _attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
                    + _attr(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
                    + _nested(NFTA_SET_ELEM_LIST_ELEMENTS,
                              _nested(NFTA_LIST_ELEM, _nested(NFTA_SET_ELEM_KEY, _attr(NFTA_DATA_VALUE, key)))))
    seq = int.from_bytes(os.urandom(4), "little") or 1
    header = struct.pack("=IHHII", 16 + len(request_body), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
                         NLM_F_REQUEST | NLM_F_ACK, seq, 0)
    with open_socket(timeout) as sock:
        sock.send(header + request_body)
        found = False
        while True:
            data = sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _flags, msg_seq, _pid = struct.unpack_from("=IHHII", data, offset)
                if length < 16:
                    raise OSError("malformed netlink answer")
                if msg_seq == seq:
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, offset + 16)[0]
                        if code == 0:
                            return found  # the ACK after the element (or after nothing)
                        if code == errno.ENOENT:
                            return False
                        raise OSError(code, os.strerror(code))
                    if kind == NLMSG_DONE:
                        return found
                    if kind & 0xFF != NFT_MSG_GETSETELEM and kind >> 8 == NFNL_SUBSYS_NFTABLES:
                        found = True  # NFT_MSG_NEWSETELEM: the element
                offset += (length + 3) & ~3


def ip_proto_service_key(address: str, protocol: int, port: int) -> bytes:
    """The key of an `ipv4_addr . inet_proto . inet_service` element: each field in a 4-byte register."""
    return socket.inet_aton(address) + struct.pack("=B3x", protocol) + struct.pack("!H2x", port)


# --- table shape ----------------------------------------------------------------------------------------------
class _Changed(Exception):
    """The ruleset changed between (or during) the requests: ask again."""


def _string_attrs(data: bytes, start: int, end: int, wanted: tuple[int, ...]) -> dict[int, str]:
    out: dict[int, str] = {}
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4:
            raise OSError(errno.EBADMSG, "malformed netfilter netlink attribute")
        kind &= NLA_TYPE_MASK
        if kind in wanted:
            out[kind] = data[start + 4:start + length].split(b"\0", 1)[0].decode(errors="replace")
        start += (length + 3) & ~3
    return out


def _ask(sock: socket.socket, seq: int, msg_type: int, flags: int, body: bytes, what: str,
         generation: list[int]) -> list[tuple[bytes, int, int]] | None:
    """One request (a dump with NLM_F_DUMP in flags, else with an ACK): its NEW* answers as (message, attributes
    start, end); None on ENOENT. Every answer carries the ruleset generation (nfgenmsg res_id): the first one seen
    is kept in `generation`, another one (or an interrupted dump) raises _Changed."""
    payload = struct.pack("=BBH", NFPROTO_IPV4, 0, 0) + body
    sock.send(struct.pack("=IHHII", 16 + len(payload), (NFNL_SUBSYS_NFTABLES << 8) | msg_type,
                          NLM_F_REQUEST | flags, seq, 0) + payload)
    found: list[tuple[bytes, int, int]] = []
    while True:
        data = sock.recv(1 << 17)
        offset = 0
        while offset + 16 <= len(data):
            length, kind, msg_flags, msg_seq, _pid = struct.unpack_from("=IHHII", data, offset)
            if length < 16 or offset + length > len(data):
                raise OSError(errno.EBADMSG, "malformed netfilter netlink answer")
            end = offset + length
            if msg_seq == seq:
                if msg_flags & NLM_F_DUMP_INTR:
                    raise _Changed()
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + 16)[0]
                    if code == 0:
                        return found
                    if code == errno.ENOENT:
                        return None
                    raise os_error(code, f"{what}: {os.strerror(code)}")
                if kind == NLMSG_DONE:
                    return found
                if kind >> 8 == NFNL_SUBSYS_NFTABLES and end >= offset + 20:
                    gen = struct.unpack_from("!H", data, offset + 18)[0]
                    if not generation:
                        generation.append(gen)
                    elif generation[0] != gen:
                        raise _Changed()
                    found.append((data, offset + 20, end))
            offset += (length + 3) & ~3


def table_shape(table: str, *, timeout: float = 5.0, attempts: int = 5) -> dict[str, int] | None:
    """{chain name: number of rules} of table `table` (family ip), or None when there is no such table. Three
    small requests, whatever the number of set elements. Raises OSError when the kernel cannot be asked (or the
    ruleset kept changing under every attempt)."""
    name = table.encode() + b"\0"
    for _ in range(attempts):
        generation: list[int] = []
        seq = int.from_bytes(os.urandom(4), "little") | 1
        try:
            with open_socket(timeout) as sock:
                if _ask(sock, seq, NFT_MSG_GETTABLE, NLM_F_ACK, _attr(NFTA_TABLE_NAME, name),
                        f"reading table {table}", generation) is None:
                    return None
                shape: dict[str, int] = {}
                for data, start, end in _ask(sock, seq + 1, NFT_MSG_GETCHAIN, NLM_F_DUMP, b"",
                                             f"listing the chains of {table}", generation) or []:
                    attrs = _string_attrs(data, start, end, (NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME))
                    if attrs.get(NFTA_CHAIN_TABLE) == table and NFTA_CHAIN_NAME in attrs:
                        shape[attrs[NFTA_CHAIN_NAME]] = 0
                for data, start, end in _ask(sock, seq + 2, NFT_MSG_GETRULE, NLM_F_DUMP,
                                             _attr(NFTA_RULE_TABLE, name), f"listing the rules of {table}",
                                             generation) or []:
                    attrs = _string_attrs(data, start, end, (NFTA_RULE_TABLE, NFTA_RULE_CHAIN))
                    chain = attrs.get(NFTA_RULE_CHAIN)
                    if attrs.get(NFTA_RULE_TABLE) == table and chain in shape:
                        shape[chain] += 1
                return shape
        except _Changed:
            continue
    raise os_error(errno.EAGAIN, f"reading table {table}: the ruleset kept changing")
