"""Test harness: a real labgate server (uvicorn on a free loopback port, real database) in this process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import httpx

from labgate.api.app import create_app
from labgate.api.http import make_server
from labgate.config import GatewayConfig, Settings
from labgate.dataplane.fake import FakeKernel
from labgate.service import Labgate
from labgate.core.tokens import create_token

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The database every test that does not need a particular one runs on: "sqlite" (a file per test) or
# "postgresql" (a fresh database per test on one throwaway server for the whole run). `make test` runs the suite
# on both (tests marked sqlite_only, about the SQLite file itself, only on SQLite).
TEST_DATABASE = os.environ.get("LG_TEST_DATABASE", "sqlite")
_postgres: list = []  # [the server's context manager, its URL] once started
_databases: dict[tuple[str, str], str] = {}


def database_url(tmp_path, name: str = "labgate.db") -> str:
    """A fresh, empty database for one test: a SQLite file in tmp_path, or a new PostgreSQL database."""
    if TEST_DATABASE == "sqlite":
        return f"sqlite:///{tmp_path}/{name}"
    if TEST_DATABASE != "postgresql":
        raise RuntimeError(f"LG_TEST_DATABASE={TEST_DATABASE!r}: sqlite or postgresql")
    # The same (folder, name) is the same database, as the same file would be: a test that restarts its server
    # asks again.
    key = (str(tmp_path), name)
    if key not in _databases:
        _databases[key] = fresh_postgres_database()
    return _databases[key]


def fresh_postgres_database() -> str:
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from tests.services.postgres import postgres_server

    if not _postgres:
        server = postgres_server(max_connections=2000)
        url = make_url(server.__enter__())
        _postgres[:] = [server, url]
        # Every test's database is a copy of one migrated to head: a copy takes milliseconds, a migration seconds.
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text('CREATE DATABASE "labgate_template"'))
        admin.dispose()
        from labgate.db.migrate import upgrade

        template = create_engine(url.set(database="labgate_template"))
        upgrade(template)
        template.dispose()
    base = _postgres[1]
    name = "t_" + uuid.uuid4().hex[:16]
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "labgate_template"'))
    finally:
        engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def stop_postgres() -> None:
    """End the run's PostgreSQL server (pytest_sessionfinish)."""
    if _postgres:
        server, _ = _postgres
        _postgres.clear()
        server.__exit__(None, None, None)


def require(ok: bool, reason: str) -> None:
    """A service test's prerequisite: outside CI a missing one skips; in CI (CI=true) it fails, never skips."""
    import pytest

    if not ok:
        if IN_CI:
            pytest.fail(f"{reason} (CI must run these tests)", pytrace=False)
        pytest.skip(reason)


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM (a clean close, like a real restart), SIGKILL after 10 s; nothing if already gone."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    labgate: Labgate

    def kernel(self, gateway: str = "default") -> FakeKernel:
        """The in-memory kernel of a gateway (API tests)."""
        kernel = self.labgate.dataplane.gateways[gateway].kernel
        assert isinstance(kernel, FakeKernel), "this server runs a real kernel"
        return kernel

    def token(self, owner: str, admin: bool = False) -> str:
        return create_token(self.labgate.db, owner, admin=admin)

    def client(self, token: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)


def fake_kernels(settings: Settings) -> Callable[[GatewayConfig], FakeKernel]:
    """An in-memory kernel per gateway whose addresses fit its config (the 'auto' address: 192.0.2.10)."""

    def make(cfg: GatewayConfig) -> FakeKernel:
        ext = "192.0.2.10" if cfg.external_address == "auto" else cfg.external_address
        return FakeKernel(addresses=[ext, "127.0.0.1"], preferred=ext)

    return make


@contextmanager
def running_server(settings: Settings, *, api_only: bool = False) -> Iterator[Server]:
    """Start labgate on a free port; stop it (and its dataplane threads) on exit, even after a failure.

    With dataplane = "none" the gateways get the in-memory fake kernel (labgate.dataplane.fake), so API tests run
    the real sync logic without root; `api_only` keeps them without any kernel (as `serve --no-agent`)."""
    port = free_port()
    settings.server.listen = f"127.0.0.1:{port}"
    fake = settings.server.dataplane == "none" and not api_only
    lg = Labgate(settings, kernels=fake_kernels(settings) if fake else None)
    # The server `labgate serve` runs (TLS, connection bound, header/body deadlines), on this process's limits.
    server = make_server(create_app(lg), settings.server, host="127.0.0.1", port=port, log_level="warning",
                         lifespan="on")
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("labgate server did not start")
        time.sleep(0.02)
    try:
        yield Server(f"{settings.server.scheme}://127.0.0.1:{port}", lg)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class RawConnection:
    """Straight to a test's database, not through labgate: sqlite3 or psycopg behind one small sqlite3-like face
    (`?` placeholders on both; `with con:` is one transaction, committed unless it raised)."""

    def __init__(self, url: str, *, dict_rows: bool = False, timeout: float = 30) -> None:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self.postgres = parsed.get_backend_name() == "postgresql"
        if self.postgres:
            import psycopg
            from psycopg.rows import dict_row, tuple_row

            self.con = psycopg.connect(parsed.set(drivername="postgresql").render_as_string(hide_password=False),
                                       row_factory=dict_row if dict_rows else tuple_row, connect_timeout=int(timeout))
        else:
            import sqlite3

            self.con = sqlite3.connect(parsed.database, timeout=timeout)
            if dict_rows:
                self.con.row_factory = sqlite3.Row

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.postgres else statement

    def execute(self, statement: str, params=()):
        if self.postgres:
            cur = self.con.cursor()
            cur.execute(self._sql(statement), tuple(params))
            return cur if cur.description is not None else _NoRows()
        return self.con.execute(statement, params)

    def executemany(self, statement: str, rows) -> None:
        if self.postgres:
            self.con.cursor().executemany(self._sql(statement), [tuple(r) for r in rows])
        else:
            self.con.executemany(statement, rows)

    def commit(self) -> None:
        self.con.commit()

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if exc_type is None:
            self.con.commit()
        else:
            self.con.rollback()


class _NoRows(list):
    """What a statement that returns no rows (UPDATE, DELETE) gives back, as sqlite3's cursor does: nothing."""

    def fetchall(self) -> list:
        return []

    def fetchone(self) -> None:
        return None
