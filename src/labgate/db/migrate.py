"""Schema migrations with Alembic, run programmatically (no alembic.ini needed on the server)."""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, text

MIGRATIONS = Path(__file__).with_name("migrations")
# The PostgreSQL advisory lock a labgate process holds while it migrates (any fixed number; this one is "labg").
MIGRATION_LOCK = 0x6C616267


class SchemaTooNew(RuntimeError):
    """The database is at a schema revision this labgate does not know: a newer labgate migrated it. Nothing was
    changed; the message names both revisions."""

    def __init__(self, revision: str, head: str) -> None:
        super().__init__(f"the database's schema is at revision {revision}, newer than this labgate knows (its "
                         f"newest is {head}): a newer labgate has migrated it")
        self.revision = revision
        self.head = head


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg)


def head_revision() -> str:
    """The newest schema revision this labgate knows."""
    head = _scripts().get_current_head()
    assert head is not None, "no migrations"
    return head


def known_revision(revision: str | None) -> bool:
    """Whether this labgate can work from `revision` (None: an empty database)."""
    if revision is None:
        return True
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the schema to `revision` (idempotent); return (revision before, revision after). Raises SchemaTooNew,
    changing nothing, when the database is at a revision this labgate does not know.

    On PostgreSQL, processes that migrate at once (API replicas starting together) take turns: the first one
    migrates, the others then find the schema at head."""
    with _migration_lock(engine):
        before = current_revision(engine)
        if not known_revision(before):
            assert before is not None
            raise SchemaTooNew(before, head_revision())
        if before != revision and not (revision == "head" and before == head_revision()):
            command.upgrade(alembic_config(engine), revision)
        return before, current_revision(engine)


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock MIGRATION_LOCK on a connection of its own (autocommit: it holds no
    transaction, so no table lock, while the migration runs on another connection). SQLite: nothing (one file,
    one server; its writers already wait for each other)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
