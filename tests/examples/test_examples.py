"""The documented examples run as written against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_settings
from tests.harness import running_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(url: str, token: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LABGATE_URL": url, "LABGATE_TOKEN": token}
    return subprocess.run([sys.executable, str(EXAMPLES / "vm_forwards.py"), *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_vm_forwards_example_creates_is_idempotent_retargets_and_deletes(database_url):
    with running_server(make_settings(database_url)) as srv:
        token = srv.token("automation")
        first = run_example(srv.url, token, "create", "win1", "10.9.0.7")
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == ["win1 ssh: 198.51.100.1:4000", "win1 rdp: 198.51.100.1:4001"]
        again = run_example(srv.url, token, "create", "win1", "10.9.0.7")
        assert again.stdout == first.stdout
        moved = run_example(srv.url, token, "create", "win1", "10.9.0.8")
        assert moved.stdout == first.stdout
        with srv.client(token) as c:
            rows = c.get("/api/v1/forwards", params={"name": "win1"}).json()["results"]
        assert {r["target_address"] for r in rows} == {"10.9.0.8"} and len(rows) == 2
        gone = run_example(srv.url, token, "delete", "win1")
        assert gone.stdout.strip() == "win1: removed 2 forward(s)"
        bad = run_example(srv.url, "lg_wrong", "create", "win1", "10.9.0.7")
        assert bad.returncode == 1 and "error:" in bad.stderr and "hint:" in bad.stderr
