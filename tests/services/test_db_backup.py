"""`labgate db backup` and `labgate db restore` against a real `labgate serve` (a subprocess, API only, JSON logs):
a backup taken while the server writes holds every forward committed before it began, consistently (each with its
port allocations), and passes integrity_check; a restore is refused while the server has the database open, then
brings the backup's forwards back without ever handing a forward id out twice."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

from labgate.core.tokens import create_token
from labgate.db.migrate import head_revision, upgrade
from labgate.db.session import Database
from tests.harness import free_port, stop_process

WAIT = 60


@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    log: Path

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=WAIT)


class Lab:
    """A config file, its SQLite database (with a token for alice) and the `labgate` command run against them."""

    def __init__(self, tmp_path: Path) -> None:
        tmp_path.mkdir(exist_ok=True)
        self.dir = tmp_path
        self.port = free_port()
        self.db_path = tmp_path / "data" / "labgate.db"
        self.config = tmp_path / "labgate.toml"
        self.config.write_text(f'''
[server]
listen = "127.0.0.1:{self.port}"
database = "sqlite:///labgate.db"
data_dir = "{tmp_path}/data"
rate_limit = 0
# API only (no kernel, no agent): a change answers at once, 202 pending, instead of waiting for an agent.
agent_wait = 0

[[gateway]]
name = "default"
external_address = "198.51.100.1"
port_range = "10000-39999"
target_networks = ["10.9.0.0/24"]

[limits]
forwards_per_owner = 0
ports_per_owner = 0
''')
        db = Database(f"sqlite:///{self.db_path}")
        upgrade(db.engine)
        self.token = create_token(db, "alice")
        db.dispose()

    def labgate(self, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABGATE_")}
        return subprocess.run([sys.executable, "-m", "labgate", *args, "--config", str(self.config)], env=env,
                              capture_output=True, text=True, timeout=WAIT)

    @contextmanager
    def serve(self, *args: str) -> Iterator[Served]:
        log = self.dir / f"serve-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABGATE_")}
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "labgate", "serve", "--no-agent", "--config",
                                     str(self.config), *args], stdout=out, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{self.port}"
        try:
            for _ in range(int(WAIT / 0.05)):
                assert proc.poll() is None, f"labgate serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            else:
                raise AssertionError(f"labgate serve did not answer /healthz:\n{log.read_text()[-3000:]}")
            yield Served(proc, url, log)
        finally:
            stop_process(proc)


def forward_ids(path: Path) -> set[int]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in con.execute("SELECT id FROM forwards")}
    finally:
        con.close()


def check_copy(path: Path) -> set[int]:
    """The forward ids of a backup, after checking it is intact, self-contained and consistent."""
    assert path.stat().st_mode & 0o077 == 0, oct(path.stat().st_mode)  # token hashes: owner only
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-journal").exists()
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
        # One snapshot: every forward has exactly its port allocations, no allocation lacks its forward.
        assert con.execute("SELECT coalesce(sum(port_count), 0) FROM forwards").fetchone() == \
            con.execute("SELECT count(*) FROM port_allocations").fetchone()
        assert con.execute("SELECT count(*) FROM port_allocations WHERE forward_id NOT IN "
                           "(SELECT id FROM forwards)").fetchone() == (0,)
        return {row[0] for row in con.execute("SELECT id FROM forwards")}
    finally:
        con.close()


def test_a_backup_taken_while_the_server_writes_holds_every_committed_forward(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    with lab.serve("--log-format", "json") as srv:
        acked: list[int] = []
        errors: list[str] = []
        stop = threading.Event()

        def write(worker: int) -> None:
            with srv.client(lab.token) as c:
                n = 0
                while not stop.is_set():
                    n += 1
                    r = c.post("/api/v1/forwards", json={"target_address": "10.9.0.5", "target_port": 1 + n % 60000,
                                                         "name": f"w{worker}-{n}", "port_count": 1 + n % 3})
                    if r.status_code != 202:  # API only: committed, pending (no agent applies it)
                        errors.append(r.text)
                        return
                    acked.append(r.json()["id"])  # answered: committed

        writers = [threading.Thread(target=write, args=(i,)) for i in range(4)]
        for t in writers:
            t.start()
        try:
            copies = []
            for i in range(3):
                while len(acked) < 20 * (i + 1) and not errors:
                    time.sleep(0.01)
                committed = set(acked)  # every forward the server had confirmed before the backup began
                res = lab.labgate("db", "backup", str(tmp_path / f"copy{i}.db"))
                assert res.returncode == 0, res
                copies.append((committed, res.stdout, len(acked)))
        finally:
            stop.set()
            for t in writers:
                t.join(WAIT)
        assert not errors, errors[:3]
        for i, (committed, stdout, after) in enumerate(copies):
            ids = check_copy(tmp_path / f"copy{i}.db")
            assert committed <= ids, sorted(committed - ids)
            assert len(ids) <= after  # nothing made up
            size = (tmp_path / f"copy{i}.db").stat().st_size
            assert stdout.startswith(f"backed up {lab.db_path} to {tmp_path / f'copy{i}.db'}: ")
            assert f"schema revision {head_revision()}, {len(ids)} forwards, integrity ok" in stdout
            assert f"{size / 1024:.1f} KiB" in stdout or f"{size / 1024 / 1024:.1f} MiB" in stdout
        assert len(copies[-1][0]) > len(copies[0][0])  # the server kept writing between the backups
        assert not list(tmp_path.glob(".copy*"))  # no temporary file left behind
        # The server's log meanwhile: one JSON object per line, the forwards' events parsed into fields, no secret.
        lines = [json.loads(line) for line in srv.log.read_text().splitlines() if line.strip()]
    assert lab.token not in srv.log.read_text()
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    listening = [line for line in lines if line.get("event") == "listening"]
    assert listening and listening[0]["url"] == srv.url and listening[0]["logger"] == "labgate.http"
    created = [line for line in lines if line.get("event") == "forward_created"]
    assert {line["id"] for line in created} >= set(acked[:20]) and created[0]["owner"] == "alice"
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's own lines are JSON too


def test_backup_refuses_to_overwrite_and_sends_postgresql_to_pg_dump(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    existing = tmp_path / "existing.db"
    existing.write_text("keep me")
    res = lab.labgate("db", "backup", str(existing))
    assert res.returncode == 4 and res.stdout == "", res
    assert res.stderr.splitlines() == [f"error: {existing} already exists",
                                       "hint: choose another name, or pass --force to replace it"]
    assert existing.read_text() == "keep me"
    assert lab.labgate("db", "backup", "--force", str(existing)).returncode == 0
    check_copy(existing)
    res = lab.labgate("db", "backup", str(tmp_path / "missing" / "x.db"))
    assert res.returncode == 3 and res.stderr.startswith(f"error: folder {tmp_path / 'missing'} does not exist")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABGATE_")}
    for command, tool in (("backup", "pg_dump"), ("restore", "pg_restore")):
        res = subprocess.run([sys.executable, "-m", "labgate", "db", command, str(tmp_path / "pg.dump")],
                             env={**env, "LABGATE_DATABASE": "postgresql+psycopg://lg:s3cret@db.example/labgate"},
                             capture_output=True, text=True, timeout=WAIT)
        assert res.returncode == 2 and res.stdout == "", res
        [line] = res.stderr.splitlines()
        assert line.startswith(f"error: labgate db {command} works on SQLite files; this database is PostgreSQL: ")
        assert f"{tool} " in line and "'postgresql://lg@db.example/labgate'" in line and "s3cret" not in line


def test_restore_round_trip(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    backup = tmp_path / "backup.db"
    with lab.serve() as srv, srv.client(lab.token) as alice:
        before = [alice.post("/api/v1/forwards", json={"target_address": "10.9.0.5", "target_port": 22 + i,
                                                        "name": f"kept{i}"}).json() for i in range(5)]
        # Those five are committed but still only in the -wal file (far from a checkpoint): a copy of the
        # database file alone would miss them.
        assert lab.labgate("db", "backup", str(backup)).returncode == 0
        after = [alice.post("/api/v1/forwards", json={"target_address": "10.9.0.6", "target_port": 22 + i,
                                                       "name": f"lost{i}"}).json()["id"] for i in range(3)]
        # Never under a running server: its state would no longer match the database.
        res = lab.labgate("db", "restore", "--force", str(backup))
        assert res.returncode == 4 and res.stdout == "", res
        message, hint = res.stderr.splitlines()
        assert message.startswith(f"error: {lab.db_path} is in use by pid {srv.proc.pid} (")
        assert hint.startswith("hint: stop labgate first")
    assert forward_ids(lab.db_path) == {f["id"] for f in before} | set(after)

    res = lab.labgate("db", "restore", str(backup))  # the database holds data: --force is needed
    assert res.returncode == 4 and "already holds a database" in res.stderr and res.stdout == ""
    res = lab.labgate("db", "restore", "--force", str(backup))
    assert res.returncode == 0, res
    [kept] = tmp_path.joinpath("data").glob("labgate.db.before-restore-*")
    assert res.stdout.strip() == (f"restored {backup} (5 forwards) into {lab.db_path}; the database it replaced is "
                                  f"kept in {kept}; schema at head ({head_revision()})")
    assert forward_ids(kept) == {f["id"] for f in before} | set(after)
    assert kept.stat().st_mode & 0o077 == 0

    with lab.serve() as srv, srv.client(lab.token) as alice:
        listed = alice.get("/api/v1/forwards").json()["results"]
        assert [(f["id"], f["name"], f["external_port"]) for f in listed] == \
            [(f["id"], f["name"], f["external_port"]) for f in before]
        new = alice.post("/api/v1/forwards", json={"target_address": "10.9.0.7", "target_port": 22})
        assert new.status_code == 202, new.text  # committed; no agent (API only)
        # The ids the lost forwards had are never handed out again: they may still mark connections.
        assert new.json()["id"] > max(after)


def test_restore_checks_the_file_first(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    good = tmp_path / "good.db"
    assert lab.labgate("db", "backup", str(good)).returncode == 0
    newer = tmp_path / "newer.db"
    assert lab.labgate("db", "backup", str(newer)).returncode == 0
    con = sqlite3.connect(newer)
    with con:
        con.execute("UPDATE alembic_version SET version_num = '0099'")
    con.close()
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    cases = [(tmp_path / "none.db", 3, "does not exist"), (lab.config, 2, "is not a SQLite database"),
             (other, 2, "is a SQLite database but not labgate's"),
             (newer, 4, f"is at schema revision 0099, newer than this labgate knows (its newest is {head_revision()})")]
    for path, code, message in cases:
        res = lab.labgate("db", "restore", "--force", str(path))
        assert res.returncode == code and res.stdout == "", res
        lines = res.stderr.splitlines()
        assert len(lines) == 2 and lines[0].startswith(f"error: {path} ") and message in lines[0], lines
        assert lines[1].startswith("hint: ") and "Traceback" not in res.stderr
    assert not list(tmp_path.joinpath("data").glob("*.before-restore-*"))  # nothing was touched

    # A machine rebuilt from scratch: no database yet, no --force needed; migrated to head.
    fresh = Lab(tmp_path / "fresh")
    fresh.db_path.unlink()
    res = fresh.labgate("db", "restore", str(good))
    assert res.returncode == 0, res
    assert "replaced" not in res.stdout and forward_ids(fresh.db_path) == set()
    assert fresh.db_path.stat().st_mode & 0o077 == 0
