"""The migrations build exactly the schema the models describe (what `labgate db upgrade` gives an existing
database is what a new one gets), checked with Alembic's own comparison on a real SQLite file."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from labgate.db import limits  # noqa: F401 - registers owner_limits on the metadata
from labgate.db.migrate import upgrade
from labgate.db.models import Base
from labgate.db.session import Database


def test_head_schema_equals_models(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'lg.db'}")
    try:
        upgrade(db.engine)
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
        assert diff == []
    finally:
        db.dispose()
