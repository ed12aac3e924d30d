"""kill -9 in the middle of a burst of creates: the restarted service restores exactly the committed forwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from labgate.core.tokens import create_token
from labgate.db.migrate import upgrade
from labgate.db.session import Database
from tests.harness import free_port, database_url
from tests.kernel.conftest import kernel_ids

pytestmark = pytest.mark.kernel


def start_server(config, log):
    proc = subprocess.Popen([sys.executable, "-m", "labgate", "serve", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
    return proc


def wait_ready(url: str, proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited"
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")


def test_kill_9_mid_burst_then_restart_restores_exactly_the_committed_rules(lab, tmp_path):
    port = free_port()
    db_url = database_url(tmp_path, "lg.db")
    config = tmp_path / "labgate.toml"
    config.write_text(f'''
[server]
listen = "127.0.0.1:{port}"
database = "{db_url}"
log_level = "warning"

[[gateway]]
name = "lab"
netns = "{lab.gateway_ns}"
external_address = "{lab.external_address}"
port_range = "4000-4999"
target_networks = ["{lab.lab_network}"]
''')
    db = Database(db_url)
    upgrade(db.engine)
    token = create_token(db, "root", admin=True)
    db.dispose()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")
    proc = start_server(config, log)
    try:
        wait_ready(url, proc)
        stop = threading.Event()
        created: list[int] = []

        def burst() -> None:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=5) as c:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        r = c.post("/api/v1/forwards", json={"target_address": lab.machine_addresses[0],
                                                             "target_port": 1 + i % 60000})
                        if r.status_code == 201:
                            created.append(r.json()["id"])
                        if i % 3 == 0 and created:
                            c.delete(f"/api/v1/forwards/{created[-1]}")
                    except httpx.HTTPError:
                        return

        threads = [threading.Thread(target=burst) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(created) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        for t in threads:
            t.join()
        assert len(created) >= 100

        proc = start_server(config, log)
        wait_ready(url, proc)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            rows = c.get("/api/v1/forwards", params={"limit": 1000}).json()["results"]
        committed = {("tcp", r["external_port"]): r["id"] for r in rows}
        assert committed, "nothing was committed before the kill"
        assert kernel_ids(lab.gateway_ns, "labgate_lab") == committed
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        log.close()
