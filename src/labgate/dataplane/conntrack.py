"""Cut established connections of a forward: delete its conntrack entries (by connection mark).

Removing a DNAT element does not stop a connection already translated: its conntrack entry keeps the old
translation until deleted. Run from a NamespaceWorker job: the child process inherits the thread's namespace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Iterable


_DELETED = re.compile(r"(\d+) flow entries have been deleted")


class ConntrackUnavailable(RuntimeError):
    """The conntrack program is missing: established sessions cannot be cut."""


def delete_by_marks(marks: Iterable[int]) -> int:
    """Delete the entries carrying each mark; returns how many conntrack reported deleted."""
    binary = shutil.which("conntrack") or ("/usr/sbin/conntrack" if os.path.exists("/usr/sbin/conntrack") else None)
    if binary is None:
        raise ConntrackUnavailable("conntrack not found: install the conntrack package")
    deleted = 0
    for mark in marks:
        if not isinstance(mark, int) or not 0 < mark <= 0xFFFFFFFF:
            raise ValueError(f"bad mark {mark!r}")
        # Exit status 1 only means "no entry matched"; the count is in stderr.
        proc = subprocess.run([binary, "-D", "--mark", str(mark)], capture_output=True, text=True, timeout=30)
        found = _DELETED.search(proc.stderr)
        if found:
            deleted += int(found.group(1))
    return deleted
