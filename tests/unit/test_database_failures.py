"""A request's failure on the database only wakes the probe; only the probe's own failed write marks the database
(and so /healthz and every gateway) down: a passing "database is locked" must not flip a liveness probe."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.exc import OperationalError

from labgate.db.migrate import upgrade
from labgate.db.session import Database

# SQLite's own lock ("database is locked"): on SQLite only.
pytestmark = pytest.mark.sqlite_only


def test_request_failure_wakes_the_probe_without_marking_the_database(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'lg.db'}")
    try:
        upgrade(db.engine)
        woken = []
        db.on_failure = lambda: woken.append(1)
        locked = OperationalError("UPDATE x", {}, sqlite3.OperationalError("database is locked"))
        message = db.failed(locked)
        assert "database is locked" in message and woken == [1]
        assert db.problem is None
        assert db.probe() is None and db.problem is None  # the file is fine: the probe says so
        (tmp_path / "lg.db").rename(tmp_path / "moved.db")  # the probe's own write now fails
        assert db.probe() is not None and "missing" in (db.problem or "")
    finally:
        db.dispose()
