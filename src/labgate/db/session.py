"""Engines and sessions: SQLite tuned for concurrent writers (WAL, busy timeout, BEGIN IMMEDIATE), or any other URL."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

_WRITE = "labgate_write"
GATE_WAIT = 30.0               # seconds a writer waits for the gate before going on to SQLite's own lock


def sqlite_file(url: str) -> str | None:
    """The absolute path of the SQLite file `url` names; None for another database, an in-memory one or a
    `file:` URI."""
    parsed = make_url(url)
    name = parsed.database
    if parsed.get_backend_name() != "sqlite" or not name or name == ":memory:" or name.startswith("file:"):
        return None
    return os.path.abspath(name)


def in_memory(url: str) -> bool:
    """Whether `url` is an in-memory SQLite database (private to one process, gone when it ends)."""
    parsed = make_url(url)
    name = parsed.database or ""
    return parsed.get_backend_name() == "sqlite" and (
        name in ("", ":memory:") or name.startswith("file::memory:") or parsed.query.get("mode") == "memory")


def make_engine(url: str) -> Engine:
    """Create the engine for `url`; for a SQLite file, create its folder and set the pragmas."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if in_memory(url):
        raise ValueError(f"{url}: labgate needs a database its threads and processes share: a SQLite file, not "
                         "an in-memory database")
    path = sqlite_file(url)
    if path is None:  # a file: URI, opened as given
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=10,
                               max_overflow=20)
    else:
        private_sqlite_file(Path(path))
        # mode=rw: a file that went missing under a running server is an error, never a new empty database.
        uri = f"file:{quote(path)}?mode=rw"
        engine = create_engine(url, pool_size=10, max_overflow=20,
                               creator=lambda: sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False))
        _follow_the_file(engine, path)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # pragma: no cover - exercised by every test
        # Let SQLAlchemy's "begin" event issue BEGIN itself (the driver's implicit BEGIN is deferred).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    # Writers of this process queue on a lock of their own before BEGIN IMMEDIATE. Without it, each waiter sat in
    # SQLite's busy handler, which sleeps 1, 2, 5 ... 100 ms between tries: with 32 concurrent creates 90% of the
    # server's busy samples were threads sleeping there while the write lock was already free (bench/results,
    # Profile). A lock wakes the next writer at once. Other processes (an agent on the same file) still meet at
    # SQLite's lock. The gate opens once COMMIT or ROLLBACK has run, or when its connection leaves the pool.
    gate = threading.Lock()
    holders: set[int] = set()      # id() of the DBAPI connections whose transaction holds the gate

    def _open_gate(conn) -> None:
        # SQLAlchemy passes the pool's proxy to do_commit/do_rollback and the raw connection to pool events.
        try:
            holders.remove(id(getattr(conn, "dbapi_connection", conn)))
        except KeyError:
            return
        gate.release()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # A writer takes the lock up front: two writers never deadlock upgrading read locks to write locks.
        if not conn.get_execution_options().get(_WRITE):
            conn.exec_driver_sql("BEGIN")
            return
        dbapi_conn = conn.connection.dbapi_connection
        # Bounded: should a transaction ever leave the gate shut, writers fall back to SQLite's own waiting.
        if id(dbapi_conn) not in holders and gate.acquire(timeout=GATE_WAIT):
            holders.add(id(dbapi_conn))
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _open_gate(dbapi_conn)
            raise

    dialect = engine.dialect
    plain_commit, plain_rollback = dialect.do_commit, dialect.do_rollback

    def do_commit(dbapi_conn) -> None:
        try:
            plain_commit(dbapi_conn)
        finally:
            _open_gate(dbapi_conn)

    def do_rollback(dbapi_conn) -> None:
        try:
            plain_rollback(dbapi_conn)
        finally:
            _open_gate(dbapi_conn)

    dialect.do_commit, dialect.do_rollback = do_commit, do_rollback  # this engine's dialect only
    engine.write_gate = gate  # type: ignore[attr-defined]  # for tests: shut only while a write is in progress

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_conn, _record) -> None:
        if dbapi_conn is not None:
            _open_gate(dbapi_conn)

    @event.listens_for(engine, "close")
    def _on_close(dbapi_conn, _record) -> None:
        _open_gate(dbapi_conn)

    return engine


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _follow_the_file(engine: Engine, path: str) -> None:
    """Connections that stay on the file at `path`: none kept after the file was moved, deleted or could not be
    written when it was opened."""

    @event.listens_for(engine, "connect")
    def _remember_file(_dbapi_conn, record) -> None:
        record.info["file"] = _inode(path)

    @event.listens_for(engine, "checkout")
    def _same_file(_dbapi_conn, record, _proxy) -> None:
        # SQLite keeps using an open file that was renamed or deleted: its writes would go where nobody will ever
        # read them. A connection to a file no longer at the path is dropped (the pool opens a new one, which
        # fails while the path is missing: mode=rw). One stat(2) per checkout: a few microseconds.
        now = _inode(path)
        if now is None or now != record.info.get("file"):
            raise DisconnectionError(f"the database file {path} was moved or removed")

    @event.listens_for(engine, "handle_error")
    def _reopen_after_file_errors(ctx) -> None:
        # A connection SQLite opened while the file could not be written stays read-only for good: drop them all,
        # so that the fixed file is opened afresh. (Not on SQLITE_FULL: closing the last connection deletes the
        # -wal file, and a new one cannot be opened on a full disk, not even to read.)
        name = getattr(ctx.original_exception, "sqlite_errorname", "") or ""
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
            ctx.is_disconnect = True


def private_sqlite_file(path: Path) -> None:
    """Make the SQLite file readable by its owner only (it holds token hashes and every forward) before SQLite
    opens it: a missing folder is created 0700, a missing file created empty 0600 (SQLite then gives the -wal and
    -shm files the database file's mode), an existing file and its -wal/-shm set to 0600. An existing folder is
    left as it is: it may be shared (/tmp, a home); the files in it are what must be private."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)  # whatever the umask
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        try:
            if file.stat().st_mode & 0o077:
                os.chmod(file, 0o600)
        except FileNotFoundError:
            pass


log = logging.getLogger("labgate.db")


class Database:
    """The engine plus two session factories: readers, and writers (serialized up front on SQLite).

    `problem` says why the database cannot be written now (None when it can): set by a request that failed on
    it (`failed`) and by the service's periodic `probe`, cleared by the first probe that succeeds."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.path = sqlite_file(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.problem: str | None = None
        self._cause: str | None = None  # the problem without the driver's words: logged when it changes
        # Called when a request failed on the database (the service wakes its probe).
        self.on_failure: Callable[[], None] | None = None
        self._problem_lock = threading.Lock()
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(**{_WRITE: True}), expire_on_commit=False)

    def reader(self) -> Session:
        return self._read()

    def writer(self) -> Session:
        return self._write()

    def dispose(self) -> None:
        self.engine.dispose()

    # --- faults ------------------------------------------------------------------------------------------------
    def _cause_of(self, raw: str) -> str:
        """Why the database cannot be used, from the file's state (the driver's message says little: "disk I/O
        error" for a file that cannot be written). Names no path: it is shown to API users."""
        if self.path is None:
            return "the database is unavailable"
        if not os.path.exists(self.path):
            return "the database file is missing (removed or moved away)"
        for f, what in ((self.path, "the file"), (self.path + "-wal", "its -wal file"),
                        (os.path.dirname(self.path), "its folder")):
            if os.path.exists(f) and not os.access(f, os.W_OK):
                return f"the database is read-only ({what} is not writable)"
        if "readonly" in raw.lower():  # a connection opened while it was (it is then opened again)
            return "the database is read-only"
        if "full" in raw.lower():
            return "the database cannot grow: its disk is full"
        try:
            vfs = os.statvfs(os.path.dirname(self.path))
            if vfs.f_bavail * vfs.f_frsize < 65536:
                return "the database cannot grow: its disk is full"
        except OSError:
            pass
        return "the database is unavailable"

    def failed(self, exc: BaseException, *, record: bool = False) -> str:
        """The one line to tell the user about a failure with `exc`. A request's failure only asks for a probe now
        (`on_failure`): a passing "database is locked" must not mark the database (and /healthz) down; the probe's
        own failure (`record`) sets `problem`."""
        raw = next(iter(str(getattr(exc, "orig", None) or exc).splitlines()), "") or type(exc).__name__
        cause = self._cause_of(raw)
        message = f"{cause}: {raw}"
        if not record:
            if self.on_failure is not None:
                self.on_failure()
            return message
        with self._problem_lock:
            if cause != self._cause:  # logged before it shows (in /healthz): whoever sees it finds the line
                log.error("event=database_unavailable path=%s %s", self.path or "-", message)
            self._cause, self.problem = cause, message
        return message

    def probe(self) -> str | None:
        """A real write (the schema version rewritten with its own value) through the pool: records and returns
        the problem, or clears it and returns None."""
        try:
            with self.engine.connect().execution_options(**{_WRITE: True}) as conn:
                with conn.begin():
                    if self.is_sqlite:
                        version = conn.exec_driver_sql("PRAGMA user_version").scalar()
                        conn.exec_driver_sql(f"PRAGMA user_version = {int(version or 0)}")
                    else:
                        conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure is the database's problem
            return self.failed(exc, record=True)
        with self._problem_lock:
            old, self._cause, self.problem = self._cause, None, None
        if old is not None:
            # Connections opened while the file could not be written stay read-only: start afresh.
            self.engine.dispose()
            log.info("event=database_ok path=%s", self.path or "-")
        return None
