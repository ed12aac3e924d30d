"""Cut established connections of a forward: delete its conntrack entries (by connection mark).

Removing a DNAT element does not stop a connection already translated: its conntrack entry keeps the old
translation until deleted. Everything here talks ctnetlink in process (ctnetlink.py) in the calling thread's
namespace: run it from a NamespaceWorker job.

Why no `conntrack` program: `conntrack -D --mark N` dumps the whole table to user space and deletes entry by entry
(and forking it from a big process costs more still: 12-24 ms a delete). One kernel-side filtered flush
(IPCTNL_MSG_CT_DELETE with CTA_MARK/CTA_MARK_MASK) does the same in about 1.3 ms with 10,000 entries. The program
is not kept as a fallback: it speaks the very same ctnetlink protocol, so where ctnetlink is unavailable (no
netfilter netlink, nf_conntrack_netlink missing) it fails too. Such failures raise OSError (ConntrackUnavailable
when the socket family itself is missing); the connection-event watcher (workers/connections.py) still runs
`conntrack -E`.
"""

from __future__ import annotations

import re
from typing import Iterable

from labgate.dataplane import ctnetlink
from labgate.dataplane.ctnetlink import Connection, ConntrackUnavailable, check_mark

__all__ = ["Connection", "ConntrackUnavailable", "FLUSH_LIMIT", "delete_by_marks", "delete_connection",
           "list_marked", "parse_connection"]

_PAIR = re.compile(r"(\w+)=(\S+)")


def parse_connection(line: str) -> Connection | None:
    """One line of `conntrack -L -o extended` (or an event line); None unless TCP/UDP with a non-zero mark."""
    words = line.split()
    protocol = next((w for w in words[:6] if w in ("tcp", "udp")), None)
    if protocol is None:
        return None
    pairs = _PAIR.findall(line)
    get = lambda key: [v for k, v in pairs if k == key]  # noqa: E731
    src, dst, sport, dport, mark = get("src"), get("dst"), get("sport"), get("dport"), get("mark")
    if len(src) < 2 or len(sport) < 2 or not dst or not dport or not mark:
        return None
    try:
        conn = Connection(protocol, src[0], int(sport[0]), dst[0], int(dport[0]), src[1], int(sport[1]),
                          int(mark[0], 0))
    except ValueError:
        return None
    return conn if conn.mark else None


def list_marked() -> list[Connection]:
    """Every TCP/UDP connection with a mark in the calling thread's namespace (IPv4 and IPv6)."""
    return ctnetlink.list_marked()


def list_marked_to(address: str) -> list[Connection]:
    """The marked TCP/UDP connections whose original destination is `address` (the kernel filters)."""
    return ctnetlink.list_marked_to(address)


def delete_connection(conn: Connection) -> None:
    """Delete exactly this entry (matched by its original tuple, and only while it carries conn.mark)."""
    ctnetlink.delete_connection(conn)


# A filtered flush walks the conntrack hash in the kernel (~0.13 us an entry); a dump copies and parses every
# entry in user space (~2.7 us an entry). Up to this many flushes are cheaper than one dump at any table size.
FLUSH_LIMIT = 16


def delete_by_marks(marks: Iterable[int], *, sock: ctnetlink.CtnetlinkSocket | None = None) -> None:
    """Delete the entries carrying each mark (ValueError for a mark outside 1..2**32-1, before anything is cut).

    The marks are covered exactly by aligned (value, mask) blocks (ctnetlink.mark_blocks): one mark is one block,
    a batch of consecutive forward ids a handful (2,000 consecutive ids: about 10). Up to FLUSH_LIMIT blocks,
    one kernel-side flush each. More (ids scattered): one dump, then each entry carrying one of the marks is
    deleted by its tuple. Their rules are gone already (the cut follows the kernel change), so no new entry takes
    these marks in between. No count is returned: a flush does not report one, and no caller used it.

    With `sock` (a CtnetlinkSocket of the calling thread's namespace), that socket is used and left open."""
    marks = {check_mark(m) for m in marks}
    if not marks:
        return
    blocks = ctnetlink.mark_blocks(marks)
    if len(blocks) <= FLUSH_LIMIT:
        ctnetlink.delete_blocks(blocks, sock=sock)
    else:
        ctnetlink.delete_dumped(marks, sock=sock)
