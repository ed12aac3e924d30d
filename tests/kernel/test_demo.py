"""`labgate demo` shows a forwarded connection; `labgate demo --down` leaves no trace."""

from __future__ import annotations

import subprocess
import sys
import uuid

from labgate.cli.demo import state_dir
from labgate.lab import list_labs
from tests.harness import free_port


def labgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labgate", *args], capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "200", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def test_demo_up_and_down():
    prefix = "lgdt" + uuid.uuid4().hex[:5]
    try:
        up = labgate("demo", "--no-wait", "--prefix", prefix, "--port", str(free_port()))
        assert up.returncode == 0, up.stdout + up.stderr
        assert "'10.9.0.5:hello'" in up.stdout and "'10.9.0.6:hello'" in up.stdout
        assert sorted(list_labs(prefix)) == [f"{prefix}-cli", f"{prefix}-gw", f"{prefix}-lab"]
    finally:
        gone = labgate("demo", "--down", "--prefix", prefix)
    assert gone.returncode == 0, gone.stderr
    assert list_labs(prefix) == []
    assert not state_dir(prefix).exists()
