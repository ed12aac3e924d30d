"""The database side of running as a cluster (docs/operations.md, Cluster): the database is the coordination point,
with no consensus of labgate's own.

- Every committed change to a gateway's forwards bumps that gateway's generation (`gateway_states`), in the change's
  own transaction, and stamps the changed forwards with it; on PostgreSQL it also NOTIFYs channel `labgate_changes`
  (delivered at commit).
- The process that programs a gateway's kernel (`labgate agent`, or `labgate serve` in one process) records the
  generation it applied, or the error the kernel gave, and a heartbeat (`agents`).
- Work that must run once in the cluster runs on the holder of a PostgreSQL advisory lock (`SingletonLock`); on
  SQLite (one host) the one process always holds it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from labgate.db.models import Agent, Forward, GatewayState
from labgate.db.session import Database

log = logging.getLogger("labgate.cluster")

CHANNEL = "labgate_changes"
# An agent whose heartbeat is older than this many of its own intervals is taken for gone.
MISSED_HEARTBEATS = 3


def _now() -> datetime:
    return datetime.now(timezone.utc)


def is_postgres(db: Database) -> bool:
    return db.engine.dialect.name == "postgresql"


def bump(s: Session, gateway: str, *, applied: bool, forward_ids: Iterable[int] = ()) -> int:
    """Count one change of `gateway` in the caller's transaction and stamp the forwards it changes (`forward_ids`,
    and those new or dirty in `s`: flushed ones are neither any more) with the new generation. `applied`: the
    caller changed the kernel itself before committing (one process), so the generation is applied as it commits.
    Otherwise the gateway's agent is told (NOTIFY on PostgreSQL)."""
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert  # noqa: PLC0415
    else:
        from sqlalchemy.dialects.sqlite import insert  # noqa: PLC0415
    values: dict[str, Any] = {"generation": GatewayState.generation + 1}
    if applied:
        values["applied_generation"] = GatewayState.generation + 1
    stmt = (insert(GatewayState).values(gateway=gateway, generation=1, applied_generation=1 if applied else 0)
            .on_conflict_do_update(index_elements=[GatewayState.gateway], set_=values)
            .returning(GatewayState.generation))
    generation = int(s.execute(stmt).scalar_one())
    ids = set(forward_ids)
    for obj in list(s.new):  # not inserted yet: inserted with it
        if isinstance(obj, Forward) and obj.gateway == gateway:
            obj.generation = generation
            ids.discard(obj.id)
    ids |= {obj.id for obj in s.dirty if isinstance(obj, Forward) and obj.gateway == gateway and obj.id is not None}
    if ids:
        # One UPDATE per chunk (a batch changes thousands), and the objects this session holds told the value as
        # committed, so that no per-object UPDATE follows at the flush.
        ordered = sorted(ids)
        for i in range(0, len(ordered), 5000):
            # updated_at kept: the stamp is bookkeeping, not a change of the forward (no onupdate for it).
            s.execute(update(Forward).where(Forward.id.in_(ordered[i:i + 5000]))
                      .values(generation=generation, updated_at=Forward.updated_at)
                      .execution_options(synchronize_session=False))
        for obj in list(s.identity_map.values()):
            if isinstance(obj, Forward) and obj.id in ids:
                set_committed_value(obj, "generation", generation)
    if not applied:
        notify_in(s, gateway)
    return generation


def notify_in(s: Session, gateway: str) -> None:
    """Tell agents to look at `gateway` when `s` commits (PostgreSQL; elsewhere they poll)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_notify(:channel, :gateway)"), {"channel": CHANNEL, "gateway": gateway})


def notify(db: Database, gateway: str) -> None:
    """Tell agents to look at `gateway` now (a change outside a forward's transaction: a router served again)."""
    if is_postgres(db):
        with db.writer() as s:
            s.execute(text("SELECT pg_notify(:channel, :gateway)"), {"channel": CHANNEL, "gateway": gateway})
            s.commit()


@dataclass(frozen=True)
class GatewaySync:
    """What the cluster knows of one gateway: its generation, what its agent applied, the agent's last error, and
    whether that agent is alive."""

    gateway: str
    generation: int
    applied_generation: int
    agent: str | None
    applied_at: datetime | None
    external_address: str | None
    last_error: str | None
    error_generation: int | None
    agent_alive: bool
    heartbeat_at: datetime | None

    def pending(self, generation: int) -> bool:
        return generation > self.applied_generation

    def failed(self, generation: int) -> bool:
        return (self.pending(generation) and self.error_generation is not None
                and self.error_generation >= generation)


def gateway_syncs(s: Session, gateways: Iterable[str] | None = None) -> dict[str, GatewaySync]:
    """gateway -> its GatewaySync (gateways never changed have none)."""
    query = select(GatewayState)
    if gateways is not None:
        query = query.where(GatewayState.gateway.in_(list(gateways)))
    states = list(s.scalars(query))
    agents = {a.name: a for a in s.scalars(select(Agent).where(
        Agent.name.in_({st.agent for st in states if st.agent})))} if states else {}
    now = _now()
    out = {}
    for st in states:
        agent = agents.get(st.agent) if st.agent else None
        alive = agent is not None and agent.stopped_at is None and alive_at(agent, now)
        out[st.gateway] = GatewaySync(st.gateway, st.generation, st.applied_generation, st.agent, st.applied_at,
                                      st.external_address, st.last_error, st.error_generation, alive,
                                      agent.heartbeat_at if agent else None)
    return out


def alive_at(agent: Agent, now: datetime) -> bool:
    return agent.heartbeat_at >= now - timedelta(seconds=MISSED_HEARTBEATS * max(agent.interval, 0.1))


def generation_of(db: Database, gateway: str) -> int:
    with db.reader() as s:
        found = s.scalar(select(GatewayState.generation).where(GatewayState.gateway == gateway))
        return int(found or 0)


def wait_applied(db: Database, gateway: str, generation: int, timeout: float, *, poll: float = 0.05) -> bool:
    """Wait (at most `timeout` seconds) until `gateway`'s agent applied `generation` (or failed it). True if
    applied."""
    deadline = time.monotonic() + timeout
    while True:
        with db.reader() as s:
            st = s.get(GatewayState, gateway)
            if st is not None and st.applied_generation >= generation:
                return True
            if st is not None and st.error_generation is not None and st.error_generation >= generation:
                return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def record_applied(db: Database, gateway: str, generation: int, agent: str, external_address: str | None) -> None:
    """The agent applied (at least) `generation` of `gateway`: never moves backwards."""
    with db.writer() as s:
        st = s.get(GatewayState, gateway, with_for_update=True)
        if st is None:
            st = GatewayState(gateway=gateway, generation=generation, applied_generation=0)
            s.add(st)
        st.applied_generation = max(st.applied_generation or 0, generation)
        st.applied_at = _now()
        st.agent = agent
        st.external_address = external_address
        if st.error_generation is not None and st.error_generation <= st.applied_generation:
            st.last_error, st.error_generation = None, None
        s.commit()


def record_error(db: Database, gateway: str, generation: int, agent: str, error: str) -> None:
    with db.writer() as s:
        st = s.get(GatewayState, gateway, with_for_update=True)
        if st is None:
            st = GatewayState(gateway=gateway, generation=generation, applied_generation=0)
            s.add(st)
        st.agent = agent
        st.last_error = error[:1000]
        st.error_generation = max(st.error_generation or 0, generation)
        s.commit()


def heartbeat(db: Database, name: str, *, host: str, pid: int, version: str, gateways: list[str],
              interval: float, started_at: datetime) -> None:
    with db.writer() as s:
        agent = s.get(Agent, name, with_for_update=True)
        if agent is None:
            agent = Agent(name=name)
            s.add(agent)
        agent.host, agent.pid, agent.version = host, pid, version
        agent.gateways = sorted(gateways)
        agent.interval = interval
        agent.started_at = started_at
        agent.heartbeat_at = _now()
        agent.stopped_at = None
        s.commit()


def agent_stopped(db: Database, name: str) -> None:
    """A clean stop: the agent is gone now, not in three heartbeats (its kernel rules stay in place)."""
    with db.writer() as s:
        s.execute(update(Agent).where(Agent.name == name).values(stopped_at=_now()))
        s.commit()


def agents(db: Database) -> list[Agent]:
    with db.reader() as s:
        return list(s.scalars(select(Agent).order_by(Agent.name)))


def states_behind(db: Database, gateways: Iterable[str]) -> dict[str, int]:
    """Of these gateways, those whose generation is ahead of what was applied: gateway -> generation."""
    names = list(gateways)
    if not names:
        return {}
    with db.reader() as s:
        return {st.gateway: st.generation for st in s.scalars(select(GatewayState).where(
            GatewayState.gateway.in_(names), GatewayState.generation > GatewayState.applied_generation))}


def _close(conn: Any) -> None:
    """Close a connection of our own, whatever state it is in (the server may be gone); returns None."""
    if conn is not None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass
    return None


class Listener:
    """LISTEN on `labgate_changes` (PostgreSQL): `wait(timeout)` returns the gateways notified meanwhile (an empty
    set on timeout). On SQLite, or when the connection fails, it only sleeps: callers poll anyway."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn: Any = None

    def _connect(self) -> Any:
        import psycopg  # noqa: PLC0415 - the postgres extra

        url = self.db.engine.url.set(drivername="postgresql")
        conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def wait(self, timeout: float, stop: threading.Event) -> set[str]:
        if not is_postgres(self.db):
            stop.wait(timeout)
            return set()
        try:
            if self._conn is None:
                self._conn = self._connect()
            got = {n.payload for n in self._conn.notifies(timeout=timeout, stop_after=1)}
            if got:  # drain what else is queued, without waiting
                got |= {n.payload for n in self._conn.notifies(timeout=0.01)}
            return got
        except Exception as exc:  # noqa: BLE001 - the fallback is polling
            log.warning("event=listen_failed error=%r (polling meanwhile)", str(exc))
            self.close()
            stop.wait(timeout)
            return set()

    def close(self) -> None:
        self._conn = _close(self._conn)


class SingletonLock:
    """Held by one process of the cluster at a time: a PostgreSQL session advisory lock, on a connection of its own
    kept open while it is held (it is released when that connection ends, so a dead holder's lock passes on).
    On SQLite, always held."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self.key = zlib.crc32(f"labgate:{name}".encode())
        # Who holds it, as PostgreSQL shows it (pg_stat_activity.application_name; `singleton_holder`).
        self.holder = f"labgate {socket.gethostname()}:{os.getpid()}"[:63]
        self._conn: Any = None

    @property
    def held(self) -> bool:
        return self._conn is not None or not is_postgres(self.db)

    def try_acquire(self) -> bool:
        """Take the lock if free (or check it is still ours). False when another process holds it, or the database
        cannot be reached (then it is not ours any more either)."""
        if not is_postgres(self.db):
            return True
        try:
            if self._conn is not None:
                self._conn.execute("SELECT 1")  # still connected: still ours
                return True
            import psycopg  # noqa: PLC0415

            url = self.db.engine.url.set(drivername="postgresql")
            conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True,
                                   application_name=self.holder)
            if conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]:
                self._conn = conn
                return True
            conn.close()
            return False
        except Exception as exc:  # noqa: BLE001
            log.warning("event=singleton_lock_failed name=%s error=%r", self.name, str(exc))
            self.release()
            return False

    def release(self) -> None:
        """Give the lock up (closing its connection ends the session, which releases it)."""
        self._conn = _close(self._conn)


def elect(lock: SingletonLock, on_change: Callable[[bool], None], was: bool) -> bool:
    """One election round: try the lock; call on_change(held) when that changed. Returns held."""
    held = lock.try_acquire()
    if held != was:
        log.warning("event=singleton_%s name=%s", "taken" if held else "lost", lock.name)
        on_change(held)
    return held


def singleton_holder(db: Database, name: str = "singletons") -> str | None:
    """Which process holds the singleton lock `name` now ("host:pid"), as PostgreSQL sees it; on SQLite the one
    process that serves (None: not known here)."""
    if not is_postgres(db):
        return None
    key = zlib.crc32(f"labgate:{name}".encode())
    with db.reader() as s:
        found = s.execute(text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid::bigint = :key "
            "AND l.objsubid = 1"), {"key": key}).scalar()
    return found.removeprefix("labgate ") if found else None
