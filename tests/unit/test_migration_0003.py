"""Migration 0003 (issue 11): existing tokens keep working - admin tokens become role admin, the others user - and
the audit table appears; it downgrades back to the admin flag."""

from __future__ import annotations

import sqlite3

import pytest
from alembic import command
from sqlalchemy import text

from labgate.core.tokens import authenticate, hash_token, last_used
from labgate.db.migrate import alembic_config, current_revision, upgrade
from labgate.db.session import Database

# Reads the migrated SQLite file directly: on SQLite only (migrations on PostgreSQL: tests/services).
pytestmark = pytest.mark.sqlite_only


def test_existing_tokens_get_roles_and_keep_working(tmp_path) -> None:
    path = tmp_path / "old.db"
    db = Database(f"sqlite:///{path}")
    upgrade(db.engine, "0002")
    with db.engine.begin() as c:
        c.execute(text("INSERT INTO tokens (owner, token_hash, admin, created_at, revoked) VALUES "
                       "('root', :a, 1, '2026-01-01 00:00:00.000000', 0), "
                       "('alice', :b, 0, '2026-01-01 00:00:00.000000', 0), "
                       "('gone', :c, 0, '2026-01-01 00:00:00.000000', 1)"),
                  {"a": hash_token("lg_root"), "b": hash_token("lg_alice"), "c": hash_token("lg_gone")})
    upgrade(db.engine, "0003")
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT owner, role, revoked, expires_at, allowed_networks, last_used_at FROM tokens "
                           "ORDER BY id").fetchall() == [
            ("root", "admin", 0, None, None, None), ("alice", "user", 0, None, None, None),
            ("gone", "user", 1, None, None, None)]
        assert "admin" not in [r[1] for r in con.execute("PRAGMA table_info(tokens)")]
        assert con.execute("SELECT count(*) FROM audit").fetchone() == (0,)
        indexes = {r[1] for r in con.execute("PRAGMA index_list(tokens)")}
        assert "ix_tokens_owner" in indexes
    finally:
        con.close()
    upgrade(db.engine)  # and on to the newest revision
    root, alice = authenticate(db, "lg_root"), authenticate(db, "lg_alice")
    assert (root.role, root.admin) == ("admin", True) and (alice.role, alice.admin) == ("user", False)
    last_used.drain()  # their first use is being recorded in the background

    command.downgrade(alembic_config(db.engine), "0002")
    assert current_revision(db.engine) == "0002"
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT owner, admin, revoked FROM tokens ORDER BY id").fetchall() == [
            ("root", 1, 0), ("alice", 0, 0), ("gone", 0, 1)]
        assert con.execute("SELECT name FROM sqlite_master WHERE name = 'audit'").fetchall() == []
    finally:
        con.close()
    db.dispose()
