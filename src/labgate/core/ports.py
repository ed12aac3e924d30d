"""Race-free external port allocation.

The database's unique constraint on (gateway, protocol, port) is what makes two holders impossible. A PortPool is
this process's picture of which ports are taken, so finding the lowest free port (or block) is a scan of a 64 KiB
bitmap instead of a query over every allocation. If another process took a port the picture missed, the insert
fails on the constraint, the picture is reloaded from the database, and the search runs again: bounded retries,
never random guessing.
"""

from __future__ import annotations

import threading

from sqlalchemy import select
from sqlalchemy.orm import Session

from labgate.db.models import PortAllocation


class PortPool:
    """Taken ports of one (gateway, protocol), as last seen; thread-safe."""

    def __init__(self, gateway: str, protocol: str, ranges: list[tuple[int, int]]) -> None:
        self.gateway = gateway
        self.protocol = protocol
        self.ranges = sorted(ranges)
        self._used = bytearray(65536)
        self._loaded = False
        self._lock = threading.Lock()

    def load(self, session: Session) -> None:
        """Re-read the taken ports from the database (through `session`, so it sees its own changes)."""
        used = bytearray(65536)
        rows = session.execute(
            select(PortAllocation.port).where(
                PortAllocation.gateway == self.gateway, PortAllocation.protocol == self.protocol)
        )
        for (port,) in rows:
            if 0 < port < 65536:
                used[port] = 1
        with self._lock:
            self._used = used
            self._loaded = True

    def ensure_loaded(self, session: Session) -> None:
        if not self._loaded:
            self.load(session)

    def in_ranges(self, start: int, count: int) -> bool:
        return any(lo <= start and start + count - 1 <= hi for lo, hi in self.ranges)

    def take_lowest(self, count: int) -> int | None:
        """Reserve the lowest block of `count` free ports inside one range; None when there is none."""
        needle = bytes(count)
        with self._lock:
            for lo, hi in self.ranges:
                idx = self._used.find(needle, lo, hi + 1)
                if idx != -1:
                    self._used[idx:idx + count] = b"\x01" * count
                    return idx
        return None

    def is_free(self, start: int, count: int) -> bool:
        with self._lock:
            return not any(self._used[start:start + count])

    def take(self, start: int, count: int) -> None:
        with self._lock:
            self._used[start:start + count] = b"\x01" * count

    def release(self, start: int, count: int) -> None:
        with self._lock:
            self._used[start:start + count] = bytes(count)
