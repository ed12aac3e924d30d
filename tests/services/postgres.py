"""A throwaway PostgreSQL server for tests: initdb + pg_ctl as the postgres user, private port and socket dir."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.harness import free_port


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for version in ("17", "16", "15", "14", "13"):
        path = Path(f"/usr/lib/postgresql/{version}/bin/{name}")
        if path.exists():
            return str(path)
    raise RuntimeError(f"{name} not found: install the Debian package postgresql")


def _as_postgres(argv: list[str]) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--"] + argv
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@contextmanager
def postgres_server(max_connections: int = 200) -> Iterator[str]:
    """Yield a SQLAlchemy URL of a fresh database; the server and its files are removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="labgate-pg-"))
    data, sock = root / "data", root / "sock"
    data.mkdir()
    sock.mkdir()
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (root, data, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    port = free_port()
    try:
        r = _as_postgres([_pg_bin("initdb"), "-D", str(data), "-U", "labgate", "--auth=trust", "-E", "UTF8"])
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr}")
        r = _as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(root / "log"), "-o",
                          f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                          f"-c max_connections={max_connections}",
                          "start"])
        if r.returncode:
            raise RuntimeError(f"pg_ctl start failed: {r.stderr} {(root / 'log').read_text() if (root / 'log').exists() else ''}")
        yield f"postgresql+psycopg://labgate@127.0.0.1:{port}/postgres"
    finally:
        _as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)
