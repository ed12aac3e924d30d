"""Forward ids that are never handed out twice, even by a create that never committed, and that only a create
nothing refused takes.

A forward's id is its connection mark in the kernel, and a create syncs the kernel before it commits. On SQLite,
AUTOINCREMENT's counter (sqlite_sequence) is part of the insert's transaction: when a process dies after the
kernel change but before the commit, the rolled-back counter hands the same id to the next forward, and one mark
then names two forwards (conntrack entries of the first would count and be cut as the second's). So on SQLite the
id is committed before the kernel can see it, in a transaction that inserts nothing else.

That transaction is the one of the create's checks that can refuse it (quota, a free port): the id is taken after
them, so a refused create (409) takes none. SQLite's writer holds the write lock from its first statement (BEGIN
IMMEDIATE), so what those checks read still holds when the id is committed. The forward itself is inserted in the
next transaction: a writer that comes in between (another process) can still take the port or the last of the
quota, and that create is then refused after all, leaving its id unused - never reused, which is what matters.

PostgreSQL sequences never go back, and the insert that draws the id runs after the same checks: nothing to do
there.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def reserve_forward_id(s: Session, count: int = 1) -> int | None:
    """A fresh forward id (the first of `count` consecutive ones: a batch), committed as taken with `s`'s
    transaction (SQLite); None where the database's own sequence is safe (and `s` is left as it was).

    `s` is a write session that has only read so far (committing it must commit the id and nothing else)."""
    if s.get_bind().dialect.name != "sqlite":
        return None
    if s.new or s.dirty or s.deleted:
        raise RuntimeError("reserve_forward_id commits its session: it must hold no pending change")
    seq = s.execute(text("SELECT seq FROM sqlite_sequence WHERE name = 'forwards'")).scalar()
    if seq is None:
        top = s.execute(text("SELECT coalesce(max(id), 0) FROM forwards")).scalar() or 0
        taken = top + 1
        s.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES ('forwards', :n)"), {"n": taken + count - 1})
    else:
        taken = seq + 1
        s.execute(text("UPDATE sqlite_sequence SET seq = :n WHERE name = 'forwards'"), {"n": taken + count - 1})
    s.commit()
    return taken
