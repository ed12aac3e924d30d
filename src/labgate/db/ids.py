"""Forward ids that are never handed out twice, even by a create that never committed.

A forward's id is its connection mark in the kernel, and a create syncs the kernel before it commits. On SQLite,
AUTOINCREMENT's counter (sqlite_sequence) is part of the insert's transaction: when a process dies after the
kernel change but before the commit, the rolled-back counter hands the same id to the next forward, and one mark
then names two forwards (conntrack entries of the first would count and be cut as the second's). So on SQLite the
id is taken first, in a transaction of its own. PostgreSQL sequences never go back: nothing to do there.
"""

from __future__ import annotations

from sqlalchemy import text

from labgate.db.session import Database


def reserve_forward_id(db: Database) -> int | None:
    """A fresh forward id, committed as taken (SQLite); None where the database's own sequence is safe."""
    if not db.is_sqlite:
        return None
    with db.writer() as s, s.begin():
        seq = s.execute(text("SELECT seq FROM sqlite_sequence WHERE name = 'forwards'")).scalar()
        if seq is None:
            top = s.execute(text("SELECT coalesce(max(id), 0) FROM forwards")).scalar() or 0
            s.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES ('forwards', :n)"), {"n": top + 1})
            return top + 1
        s.execute(text("UPDATE sqlite_sequence SET seq = :n WHERE name = 'forwards'"), {"n": seq + 1})
        return seq + 1
