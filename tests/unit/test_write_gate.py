"""SQLite writers of one process queue on the engine's write gate (db/session.py) before BEGIN IMMEDIATE: it is shut
exactly while a write transaction is in progress, opens after a commit, a rollback, a failed statement, a session
closed without committing and a BEGIN that failed, and many threads writing at once all succeed."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from sqlalchemy import event, text

from labgate.db.session import Database

pytestmark = pytest.mark.sqlite_only


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'lg.db'}")
    with database.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    try:
        yield database
    finally:
        database.dispose()


def count(db: Database) -> int:
    with db.reader() as s:
        return s.execute(text("SELECT count(*) FROM t")).scalar_one()


def test_the_gate_is_shut_only_during_a_write(db):
    gate = db.engine.write_gate
    assert not gate.locked()
    with db.reader() as s:
        s.execute(text("SELECT 1"))
        assert not gate.locked()          # readers never take it
    with db.writer() as s:
        s.execute(text("INSERT INTO t (v) VALUES (1)"))
        assert gate.locked()
        s.commit()
        assert not gate.locked()          # open once COMMIT ran, the session still open
        s.execute(text("INSERT INTO t (v) VALUES (2)"))   # a second transaction in the same session
        assert gate.locked()
        s.rollback()
        assert not gate.locked()
    with db.writer() as s:
        s.execute(text("INSERT INTO t (v) VALUES (3)"))
    assert not gate.locked()              # closed without a commit: rolled back, gate open
    with pytest.raises(Exception):
        with db.writer() as s:
            s.execute(text("INSERT INTO t (v) VALUES (NULL)"))   # NOT NULL: the statement fails
    assert not gate.locked()
    with db.engine.execution_options(labgate_write=True).begin() as conn:   # Core, as batch.py writes
        conn.execute(text("INSERT INTO t (v) VALUES (4)"))
        assert gate.locked()
    assert not gate.locked()
    assert count(db) == 2                 # 1 and 4


def test_a_begin_that_fails_leaves_the_gate_open(db, tmp_path):
    # Another process holds SQLite's write lock: BEGIN IMMEDIATE fails after the busy timeout (shortened here).
    def short_timeout(dbapi_conn, _record) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout=50")

    db.engine.dispose()
    event.listen(db.engine, "connect", short_timeout)  # after labgate's own pragmas, so it wins
    other = sqlite3.connect(tmp_path / "lg.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Exception, match="locked"):
            with db.writer() as s:
                s.execute(text("INSERT INTO t (v) VALUES (1)"))
        assert not db.engine.write_gate.locked()
    finally:
        other.execute("ROLLBACK")
        other.close()
        event.remove(db.engine, "connect", short_timeout)
    with db.writer() as s:
        s.execute(text("INSERT INTO t (v) VALUES (1)"))
        s.commit()
    assert count(db) == 1 and not db.engine.write_gate.locked()


def test_many_threads_writing_at_once_all_succeed(db):
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(50):
                with db.writer() as s:
                    s.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": n * 1000 + i})
                    if i % 7 == 0:
                        s.rollback()
                    else:
                        s.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert count(db) == 16 * (50 - len(range(0, 50, 7)))
    assert not db.engine.write_gate.locked()
