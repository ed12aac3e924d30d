"""`labgate db upgrade` on SQLite and on a real PostgreSQL (a throwaway cluster): from an empty database to the
schema the models describe, from revision 0004 with its data kept (and used by a server afterwards), "already at
head", a schema newer than this labgate refused, and replicas migrating at once on PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from itertools import count
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.engine import make_url

from labgate.config import GatewayConfig
from labgate.core.tokens import hash_token
from labgate.db import limits  # noqa: F401 - registers owner_limits on the metadata
from labgate.db.migrate import current_revision, head_revision, upgrade
from labgate.db.models import Base
from labgate.db.session import Database
from tests.conftest import make_settings
from tests.harness import require, running_server
from tests.services.postgres import postgres_server

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
_names = count(1)


@pytest.fixture(scope="module")
def pg_server():
    require(shutil.which("initdb") is not None or any(Path("/usr/lib/postgresql").glob("*/bin/initdb")),
            "PostgreSQL is not installed (Debian package postgresql)")
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path: Path) -> str:
    """The URL of a database that does not exist yet (SQLite) or is empty (a new PostgreSQL database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/data/labgate.db"
    server = request.getfixturevalue("pg_server")
    name = f"lg_upgrade_{next(_names)}"
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def db_upgrade(url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABGATE_")}
    env.update(LABGATE_DATABASE=url, LABGATE_DATA_DIR=str(tmp_path / "data"))
    return subprocess.run([sys.executable, "-m", "labgate", "db", "upgrade"], env=env, capture_output=True,
                          text=True, timeout=120)


def shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def test_upgrade_from_an_empty_database(empty_url: str, tmp_path: Path) -> None:
    res = db_upgrade(empty_url, tmp_path)
    assert res.returncode == 0, res
    assert res.stdout == f"{shown(empty_url)}: schema (empty) -> {head_revision()}\n" and res.stderr == ""
    res = db_upgrade(empty_url, tmp_path)
    assert res.returncode == 0, res
    assert res.stdout == f"{shown(empty_url)}: already at head ({head_revision()})\n"
    db = Database(empty_url)
    try:
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
        assert diff == []
    finally:
        db.dispose()


def test_upgrade_from_0004_keeps_the_data(empty_url: str, tmp_path: Path) -> None:
    db = Database(empty_url)
    assert upgrade(db.engine, "0004") == (None, "0004")
    old = MetaData()
    old.reflect(db.engine)  # the tables as revision 0004 made them (the models describe the newest ones)
    t = old.tables
    with db.engine.begin() as conn:
        conn.execute(t["tokens"].insert(), [
            {"id": 1, "owner": "alice", "token_hash": hash_token("lg_alice"), "created_at": WHEN, "revoked": False,
             "role": "user", "allowed_networks": ["192.0.2.0/24", "127.0.0.0/8"]},
            {"id": 2, "owner": "root", "token_hash": hash_token("lg_root"), "created_at": WHEN, "revoked": False,
             "role": "admin", "allowed_networks": None}])
        for fid, port, count_ in ((7, 4000, 1), (9, 4010, 3)):
            conn.execute(t["forwards"].insert(), {
                "id": fid, "gateway": "default", "protocol": "tcp", "external_port": port, "port_count": count_,
                "target_address": "10.9.0.5", "target_port": 22, "name": f"m{fid}", "kind": "ssh", "owner": "alice",
                "description": "from 0004", "enabled": True, "allowed_sources": ["192.0.2.0/24"], "created_at": WHEN,
                "updated_at": WHEN})
            conn.execute(t["port_allocations"].insert(), [
                {"gateway": "default", "protocol": "tcp", "port": port + i, "forward_id": fid} for i in range(count_)])
        conn.execute(t["owner_limits"].insert(), {"owner": "alice", "forwards": 3, "ports": 10, "updated_at": WHEN,
                                                  "updated_by": "root"})
        if db.is_sqlite:
            conn.execute(text("UPDATE sqlite_sequence SET seq = 9 WHERE name = 'forwards'"))
        else:
            conn.execute(text("SELECT setval(pg_get_serial_sequence('forwards', 'id'), 9)"))
    db.dispose()

    res = db_upgrade(empty_url, tmp_path)
    assert res.returncode == 0, res
    assert res.stdout == f"{shown(empty_url)}: schema 0004 -> {head_revision()}\n"

    settings = make_settings(empty_url, gateways=[GatewayConfig(
        name="default", external_address="198.51.100.1", port_range=["4000-4012"], target_networks=["10.9.0.0/24"])])
    with running_server(settings) as srv, srv.client("lg_alice") as alice, srv.client("lg_root") as root:
        listed = alice.get("/api/v1/forwards").json()["results"]
        assert [(f["id"], f["external_port"], f["port_count"], f["name"], f["description"], f["allowed_sources"],
                 f["enabled"]) for f in listed] == [
            (7, 4000, 1, "m7", "from 0004", ["192.0.2.0/24"], True),
            (9, 4010, 3, "m9", "from 0004", ["192.0.2.0/24"], True)]
        assert listed[0]["created_at"].startswith("2026-01-02T03:04:05")
        limits_ = root.get("/api/v1/limits/alice").json()
        assert (limits_["forwards_limit"], limits_["ports_limit"], limits_["forwards"], limits_["ports"]) == \
            (3, 10, 2, 4), limits_
        # The kept allocations and id counter hold: the next forward gets the first free port and a new id.
        new = alice.post("/api/v1/forwards", json={"target_address": "10.9.0.6", "target_port": 22})
        assert new.status_code == 201, new.text
        assert (new.json()["id"], new.json()["external_port"]) == (10, 4001)
        assert alice.post("/api/v1/forwards", json={"target_address": "10.9.0.6", "target_port": 23,
                                                    "external_port": 4011}).status_code == 409
    assert srv.labgate.db.url == empty_url


def test_a_newer_schema_is_refused_and_left_alone(empty_url: str, tmp_path: Path) -> None:
    db = Database(empty_url)
    upgrade(db.engine)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    res = db_upgrade(empty_url, tmp_path)
    assert res.returncode == 4 and res.stdout == "", res
    assert res.stderr.splitlines() == [
        f"error: the database's schema is at revision 0099, newer than this labgate knows (its newest is "
        f"{head_revision()}): a newer labgate has migrated it",
        "hint: run the labgate version that migrated it, or a newer one"]
    assert current_revision(db.engine) == "0099"
    db.dispose()


def test_replicas_starting_together_on_postgresql_migrate_once(pg_server: str) -> None:
    """API replicas (`labgate serve --no-agent`) on one PostgreSQL migrate at start: they take turns."""
    name = f"lg_upgrade_{next(_names)}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    url = make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    dbs = [Database(url) for _ in range(6)]
    try:
        with ThreadPoolExecutor(len(dbs)) as pool:
            results = list(pool.map(lambda db: upgrade(db.engine), dbs))
        head = head_revision()
        assert results.count((None, head)) == 1 and results.count((head, head)) == len(dbs) - 1, results
    finally:
        for db in dbs:
            db.dispose()
