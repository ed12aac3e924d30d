"""`labgate serve` as a real subprocess (API only, `--no-agent`): memory under an unauthenticated 50 MB body, the
TLS certificate reloaded on SIGHUP, plain HTTP refused off loopback, the descriptor limit raised, private files."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx

from labgate.core.tokens import create_token
from labgate.db.migrate import upgrade
from labgate.db.session import Database
from tests.api.test_hardening_http import served_certificate, write_certificate
from tests.harness import free_port, stop_process

WAIT = 60


@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    port: int
    log: Path
    token: str

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) of the server, in KiB."""
        values = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
        return values

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=WAIT, verify=False)


def write_config(tmp_path: Path, port: int, server_toml: str = "", listen: str | None = None) -> Path:
    config = tmp_path / "labgate.toml"
    config.write_text(f'''
[server]
listen = "{listen or f'127.0.0.1:{port}'}"
database = "sqlite:///{tmp_path}/data/labgate.db"
data_dir = "{tmp_path}/data"
log_level = "info"
{server_toml}

[[gateway]]
name = "default"
external_address = "198.51.100.1"
port_range = "4000-4100"
target_networks = ["10.9.0.0/24"]
''')
    return config


def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    for _ in range(int(WAIT / 0.05)):
        assert proc.poll() is None, f"labgate serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(url + "/healthz", timeout=2, verify=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        threading.Event().wait(0.05)
    raise AssertionError(f"labgate serve did not answer /healthz:\n{log.read_text()[-3000:]}")


@contextmanager
def served(tmp_path: Path, server_toml: str = "", *, scheme: str = "http", args: tuple[str, ...] = (),
           preexec: Callable[[], None] | None = None) -> Iterator[Served]:
    port = free_port()
    config = write_config(tmp_path, port, server_toml)
    db = Database(f"sqlite:///{tmp_path}/data/labgate.db")
    upgrade(db.engine)
    token = create_token(db, "alice")
    db.dispose()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "labgate", "serve", "--no-agent", "--config", str(config),
                                 *args], stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec)
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield Served(proc, url, port, log, token)
    finally:
        stop_process(proc)


def test_an_unauthenticated_50mb_post_is_401_and_costs_the_server_no_memory(tmp_path: Path) -> None:
    with served(tmp_path) as srv, srv.client() as anon, srv.client(srv.token) as alice:
        # warm up every path the big request takes (imports, the thread pool, the database)
        assert anon.post("/api/v1/forwards", content=b"{}").status_code == 401
        assert alice.get("/api/v1/forwards").status_code == 200
        before = srv.memory()
        body = b"x" * (50 * 1024 * 1024)
        for _ in range(2):
            resp = anon.post("/api/v1/forwards", content=body, headers={"Content-Type": "application/json"})
            assert resp.status_code == 401
            assert resp.json()["error"]["code"] == "unauthorized"
        after = srv.memory()
        assert srv.proc.poll() is None
        # The body was never buffered: the peak grew by far less than one body (it would grow by 50-100 MiB).
        assert after["VmHWM"] - before["VmHWM"] < 16 * 1024, (before, after)
        # and an authenticated body over the limit is 413, also without being read
        resp = alice.post("/api/v1/forwards", content=body[: 10 * 1024 * 1024])
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_large"
        assert srv.memory()["VmHWM"] - before["VmHWM"] < 16 * 1024


def test_sighup_reloads_the_certificate_without_a_restart(tmp_path: Path) -> None:
    cert, key, first = write_certificate(tmp_path / "tls", "first")
    toml = f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"'
    with served(tmp_path, toml, scheme="https") as srv:
        assert served_certificate(srv.port) == first
        staged, staged_key, second = write_certificate(tmp_path / "next", "second")
        os.replace(staged, cert)
        os.replace(staged_key, key)
        assert served_certificate(srv.port) == first  # nothing changes until told
        srv.proc.send_signal(signal.SIGHUP)
        for _ in range(int(WAIT / 0.05)):
            assert srv.proc.poll() is None, "SIGHUP ended the server"
            if served_certificate(srv.port) == second:
                break
            threading.Event().wait(0.05)
        assert served_certificate(srv.port) == second
        # A broken file on the next SIGHUP: the server says so and keeps the certificate it has.
        key.write_text("not a key")
        srv.proc.send_signal(signal.SIGHUP)
        for _ in range(int(WAIT / 0.05)):
            if "event=tls_reload_failed" in srv.log.read_text():
                break
            threading.Event().wait(0.05)
        assert "event=tls_reload_failed" in srv.log.read_text()
        assert srv.proc.poll() is None
        assert served_certificate(srv.port) == second
        with srv.client(srv.token) as c:
            resp = c.get("/api/v1/forwards")
            assert resp.status_code == 200
            assert resp.headers["strict-transport-security"].startswith("max-age=")
    assert "not a key" not in srv.log.read_text()


def test_plain_http_off_loopback_is_refused_unless_insecure(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    argv = [sys.executable, "-m", "labgate", "serve", "--no-agent", "--config", str(config),
            "--listen", f"0.0.0.0:{port}"]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT)
    assert refused.returncode == 2, refused.stderr
    assert "refusing to serve plain HTTP on 0.0.0.0" in refused.stderr
    assert "tls_cert_file" in refused.stderr and "--insecure" in refused.stderr and "insecure_http" in refused.stderr
    # Told to: it serves (no token exists in this database, and it stops at once).
    log = tmp_path / "insecure.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv + ["--insecure"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, log)
    finally:
        stop_process(proc)


def test_serve_raises_its_descriptor_limit_and_sizes_connections_from_it(tmp_path: Path) -> None:
    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))

    with served(tmp_path, preexec=low_soft_limit) as srv:
        limits = Path(f"/proc/{srv.proc.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
        assert "max_connections=1024" in srv.log.read_text()  # 4096 - 256 kept, at most 1024


def test_database_and_data_dir_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        folder = tmp_path / "new" / "data"
        db = Database(f"sqlite:///{folder}/labgate.db")
        upgrade(db.engine)
        create_token(db, "alice")  # writes: the WAL and shared-memory files exist while the engine is open
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert {"labgate.db", "labgate.db-wal", "labgate.db-shm"} <= set(modes), modes
        assert set(modes.values()) == {0o600}, modes
        db.dispose()
        # A database made by an older labgate (0644 files): made private when next opened.
        legacy = tmp_path / "legacy.db"
        sqlite3.connect(legacy).execute("CREATE TABLE t (x)").connection.close()
        legacy.chmod(0o644)
        Database(f"sqlite:///{legacy}").dispose()
        assert stat.S_IMODE(legacy.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_serve_makes_an_existing_data_dir_private(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir(mode=0o755)
    (tmp_path / "data").chmod(0o755)
    with served(tmp_path):
        assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "data" / "labgate.db").stat().st_mode) == 0o600


def test_a_certificate_that_does_not_load_is_a_clear_error(tmp_path: Path) -> None:
    cert, key, _ = write_certificate(tmp_path / "tls")
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    config = write_config(tmp_path, free_port(), f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"')
    proc = subprocess.run([sys.executable, "-m", "labgate", "serve", "--no-agent", "--config", str(config)],
                          capture_output=True, text=True, timeout=WAIT)
    assert proc.returncode == 2, proc.stderr
    assert "error: cannot load tls_cert_file" in proc.stderr and "Traceback" not in proc.stderr
