"""Ask the kernel about one set element, without listing the set.

nft 1.0.6 fills its whole cache before answering even `get element` (about 2 s at 50,000 elements), but the
kernel answers a single-element NFT_MSG_GETSETELEM in microseconds. This is that one request, over a netfilter
netlink socket opened in the calling thread's network namespace (run it from a NamespaceWorker). Only what the
drift check needs: does element KEY exist in set SET of table TABLE (family ip)?
"""

from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETSETELEM = 13
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NFPROTO_IPV4 = 2
NLA_F_NESTED = 0x8000
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_DATA_VALUE = 1


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
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))
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
