"""Cut established connections of a forward: delete its conntrack entries (by connection mark).

Removing a DNAT element does not stop a connection already translated: its conntrack entry keeps the old
translation until deleted. Run from a NamespaceWorker job: the child process inherits the thread's namespace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable


_DELETED = re.compile(r"(\d+) flow entries have been deleted")


class ConntrackUnavailable(RuntimeError):
    """The conntrack program is missing: established sessions cannot be cut."""


def _binary() -> str:
    binary = shutil.which("conntrack") or ("/usr/sbin/conntrack" if os.path.exists("/usr/sbin/conntrack") else None)
    if binary is None:
        raise ConntrackUnavailable("conntrack not found: install the conntrack package")
    return binary


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
    """Every TCP/UDP connection with a mark in the calling thread's namespace."""
    proc = subprocess.run([_binary(), "-L", "-o", "extended"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise OSError(f"conntrack -L failed: {proc.stderr.strip()[:200]}")
    return [c for c in map(parse_connection, proc.stdout.splitlines()) if c is not None]


def delete_connection(conn: Connection) -> None:
    """Delete exactly this entry (matched by its original tuple and mark)."""
    subprocess.run([_binary(), "-D", "-p", conn.protocol, "-s", conn.src, "-d", conn.dst, "--sport", str(conn.sport),
                    "--dport", str(conn.dport), "--mark", str(conn.mark)], capture_output=True, text=True,
                   timeout=30)


# More marks than this (a batch delete): list the table once and delete only the marks that have entries, rather
# than one `conntrack -D` per mark (about 12 ms each: 24 s for a batch of 2,000).
BULK_MARKS = 8


def delete_by_marks(marks: Iterable[int]) -> int:
    """Delete the entries carrying each mark; returns how many conntrack reported deleted."""
    binary = _binary()
    deleted = 0
    marks = list(marks)
    for mark in marks:
        if not isinstance(mark, int) or not 0 < mark <= 0xFFFFFFFF:
            raise ValueError(f"bad mark {mark!r}")
    if len(marks) > BULK_MARKS:
        # Their rules are gone already (the cut follows the kernel change), so no new entry can take these marks
        # between this listing and the deletes.
        try:
            live = {c.mark for c in list_marked()}
        except OSError:
            live = None  # one delete per mark, as for a few
        if live is not None:
            marks = [m for m in marks if m in live]
    for mark in marks:
        # Exit status 1 only means "no entry matched"; the count is in stderr.
        proc = subprocess.run([binary, "-D", "--mark", str(mark)], capture_output=True, text=True, timeout=30)
        found = _DELETED.search(proc.stderr)
        if found:
            deleted += int(found.group(1))
    return deleted
