"""The README's commands, run as written: every code block marked `<!-- run by tests/kernel/test_readme.py -->`
is executed by bash against a real `labgate serve` started as `make run` starts it (embedded defaults: the host
namespace, external address "auto"), from another directory than the server's, as a new user's shell would. The
"host" is a throwaway network namespace with a default route, so the host's own ruleset is never touched."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import uuid

import httpx
import pytest

from labgate.lab import in_netns, remove_namespace
from tests.harness import free_port, require, stop_process

# On SQLite only: about the embedded default (a SQLite file) and the faults of that file.
pytestmark = [pytest.mark.kernel, pytest.mark.sqlite_only]

ROOT = Path(__file__).resolve().parents[2]
MARK = "<!-- run by tests/kernel/test_readme.py -->"
BIN = Path(sys.executable).parent


def marked_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(re.escape(MARK) + r"\s*```[a-z]*\n(.*?)```", text, re.S)
    assert len(blocks) >= 2, "the README's runnable examples are gone"
    return blocks


def commands(block: str) -> str:
    """A block as a script: with '$ ' prompts, only the prompted lines (the rest is output); `ssh` is left out."""
    lines = block.splitlines()
    if any(line.startswith("$ ") for line in lines):
        kept: list[str] = []
        continuing = False
        for line in lines:
            if line.startswith("$ ") or continuing:
                kept.append(line[2:] if line.startswith("$ ") else line)
                continuing = line.endswith("\\")
        lines = kept
    return "\n".join(line for line in lines if not line.lstrip().startswith("ssh "))


@pytest.fixture
def machine():
    """A namespace standing in for a fresh machine: loopback, one interface with a default route."""
    ns = "lgrd" + uuid.uuid4().hex[:8]
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        for args in (["link", "set", "lo", "up"], ["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                     ["addr", "add", "192.0.2.10/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
                     ["route", "add", "default", "via", "192.0.2.1"]):
            subprocess.run(["ip", "-n", ns, *args], check=True)
        yield ns
    finally:
        remove_namespace(ns)


@pytest.fixture
def served(machine: str, tmp_path: Path):
    """`labgate serve` with the embedded defaults but for the data dir and port, as a subprocess."""
    port = free_port()
    env = dict(os.environ, LABGATE_DATA_DIR=str(tmp_path / "data"), LABGATE_LISTEN=f"127.0.0.1:{port}",
               HOME=str(tmp_path / "home"), PATH=f"{BIN}:{os.environ['PATH']}")
    for name in ("LABGATE_CONFIG", "LABGATE_URL", "LABGATE_TOKEN", "LABGATE_DATABASE", "LABGATE_DATAPLANE"):
        env.pop(name, None)
    (tmp_path / "server").mkdir()
    (tmp_path / "home").mkdir()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", machine, str(BIN / "labgate"), "serve"],
                                cwd=tmp_path / "server", env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if in_netns(machine, lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield machine, port, env, log
    finally:
        stop_process(proc)


def run_block(script: str, machine: str, port: int, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    script = script.replace("http://127.0.0.1:3000", f"http://127.0.0.1:{port}")
    script = script.replace("http://gw:3000", f"http://127.0.0.1:{port}")
    return subprocess.run(["ip", "netns", "exec", machine, "bash", "-euo", "pipefail", "-c", script], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


def test_readme_examples_run_as_written(served, tmp_path: Path) -> None:
    require(shutil.which("curl") is not None, "curl is needed to run the README's examples")
    machine, port, env, log = served
    # With no token yet, the server said how to make the first one.
    assert "labgate token create admin --admin" in log.read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    quick_start, first = marked_blocks()[1], marked_blocks()[0]
    assert "curl" in quick_start and "labgate token create" in quick_start
    # The quick start, with a line added to hand its token to the next block.
    done = run_block(quick_start + '\necho "TOKEN=$TOKEN"\n', machine, port, env, elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert '"name":"default"' in out.replace(" ", "")              # curl .../gateways
    assert '"external_address":"192.0.2.10"' in out.replace(" ", "")  # "auto": the default route's address
    assert '"target_address":"10.9.0.5"' in out.replace(" ", "")   # curl -d ... (a form content type)
    assert "centos1" in out.split("labgate forward ls")[-1] or out.count("centos1") >= 2
    assert "stored in sqlite:///" + str(tmp_path / "data" / "labgate.db") in done.stderr
    token = re.search(r"^TOKEN=(\S+)$", out, re.M).group(1)
    # The README's first example, with the token the quick start made.
    first_run = run_block(commands(first), machine, port, dict(env, TOKEN=token), elsewhere)
    assert first_run.returncode == 0, first_run.stdout + first_run.stderr
    created = first_run.stdout
    assert '"external_port":' in created.replace(" ", "") and not created.startswith('{"error"')
    # A fresh machine does not route (ip_forward = 0): the forward exists, and says it cannot work yet.
    assert '"status":"error"' in created.replace(" ", "")
    assert '"status":"not_forwarding"' in out.replace(" ", "") and "sysctl -w net.ipv4.ip_forward=1" in out
    # The token went to the database the server uses, though made from another directory.
    assert not (elsewhere / "var").exists() and (tmp_path / "data" / "labgate.db").exists()


def test_make_puts_labgate_on_path() -> None:
    """`make run` / `make test` link the venv's `labgate` into /usr/local/bin (as root), so the README's commands
    work in a new shell."""
    require(os.geteuid() == 0 and os.environ.get("LG_TEST_VIA_MAKE") == "1",
            "only `make test` as root links labgate into /usr/local/bin")
    link = Path("/usr/local/bin/labgate")
    assert link.is_symlink() and Path(os.readlink(link)) == BIN / "labgate"
    found = subprocess.run(["bash", "-c", "command -v labgate"], capture_output=True, text=True,
                           env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                "HOME": "/root"})
    assert found.stdout.strip() == str(link)
