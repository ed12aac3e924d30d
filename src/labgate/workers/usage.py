"""Per-forward usage: read the kernel's counters and keep running totals and last_used_at in the database.

The kernel counters can start over (the usage table rebuilt, the namespace re-created); totals grow by the
difference from the last reading, and a counter that went down counts from zero. So an admin answers "do they use
that resource?" with one call: connections, packets, bytes and last_used_at of every forward.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from labgate.dataplane.reconcile import Dataplane, DataplaneError
from labgate.db import queries
from labgate.db.models import Forward, ForwardState
from labgate.db.session import Database

log = logging.getLogger("labgate.usage")
CHUNK = 500


def _delta(new: int, old: int) -> int:
    return new - old if new >= old else new


class UsageCollector:
    def __init__(self, db: Database, dataplane: Dataplane) -> None:
        self.db = db
        self.dataplane = dataplane

    def collect_once(self) -> int:
        """Read every gateway's counters and fold them into forward_state; returns the forwards updated."""
        updated = 0
        for gw in self.dataplane.gateways.values():
            if gw.kernel is None or gw.external_address is None:
                continue  # no counters here (another process is the agent), or the gateway is not up yet
            try:
                # Only forwards that counted something come out of the kernel; those the database remembers
                # with non-zero readings are added at zero below, so a counter that started over is seen.
                counts = gw.read_usage(nonzero=True)
                with self.db.reader() as s:
                    for fid in queries.ids_with_raw_usage(s, gw.cfg.name):
                        counts.setdefault(fid, (0, 0, 0))
            except DataplaneError as exc:
                log.warning("event=usage_read_failed gateway=%s error=%r", gw.cfg.name, str(exc))
                continue
            if counts:
                updated += self._fold(gw.cfg.name, counts)
        return updated

    def _fold(self, gateway: str, counts: dict[int, tuple[int, int, int]]) -> int:
        """Read current state without the write lock; write only forwards whose counters moved, briefly."""
        now = datetime.now(timezone.utc)
        ids = sorted(counts)
        changes: list[dict] = []
        with self.db.reader() as s:
            for i in range(0, len(ids), CHUNK):
                chunk = ids[i:i + CHUNK]
                existing = queries.existing_forward_ids(s, gateway, chunk)
                states = queries.forward_states_by_id(s, existing)
                for fid in chunk:
                    if fid not in existing:
                        continue  # deleted since the kernel was last synced
                    conns, packets, nbytes = counts[fid]
                    st = states.get(fid)
                    raw = (st.raw_connections, st.raw_packets, st.raw_bytes) if st else (0, 0, 0)
                    if (conns, packets, nbytes) == raw:
                        continue
                    changes.append({"forward_id": fid, "raw": (conns, packets, nbytes),
                                    "delta": tuple(_delta(n, o) for n, o in zip((conns, packets, nbytes), raw))})
        if not changes:
            return 0
        with self.db.writer() as s:
            for ch in changes:
                st = s.get(ForwardState, ch["forward_id"])
                if st is None:
                    if s.get(Forward, ch["forward_id"]) is None:
                        continue
                    st = ForwardState(forward_id=ch["forward_id"], port_state="unknown", port_failures=0,
                                      connections=0, packets=0, bytes=0)
                    s.add(st)
                dc, dp, db_ = ch["delta"]
                st.connections = (st.connections or 0) + dc
                st.packets = (st.packets or 0) + dp
                st.bytes = (st.bytes or 0) + db_
                if dc or dp or db_:
                    st.last_used_at = now
                st.raw_connections, st.raw_packets, st.raw_bytes = ch["raw"]
            s.commit()
        return len(changes)
