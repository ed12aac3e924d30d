"""`labgate demo` shows a forwarded connection; every command it suggests works as printed; it says how to stop it
and how to remove the lab; SIGTERM, SIGINT and SIGHUP stop it cleanly, leaving no process behind; `labgate demo
--down` leaves no trace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from labgate.cli.demo import state_dir
from labgate.lab import list_labs, namespace_pids
from tests.harness import free_port

# On SQLite only: about the embedded default (a SQLite file) and the faults of that file.
pytestmark = [pytest.mark.kernel, pytest.mark.sqlite_only]

ENV = {"COLUMNS": "200", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
READY = "Press Ctrl-C (or send SIGTERM) to stop serving."


def labgate(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labgate", *args], capture_output=True, text=True, timeout=120,
                          env={**ENV, **env})


def new_prefix() -> str:
    return "lgdt" + uuid.uuid4().hex[:5]


def remove_demo(prefix: str) -> None:
    gone = labgate("demo", "--down", "--prefix", prefix)
    assert gone.returncode == 0, gone.stderr
    assert list_labs(prefix) == []
    assert not state_dir(prefix).exists()


def suggested_commands(output: str) -> list[str]:
    """The indented command lines under "Try it yourself"."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Try it yourself")) + 1
    commands = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        commands.append(line[2:])
    assert commands, output
    return commands


def check_suggestions(output: str, serving: bool, home: Path) -> None:
    """Run every suggested command exactly as printed (through a shell, with the demo's PATH); each must work."""
    env = {**ENV, "HOME": str(home), "LABGATE_CLIENT_CONFIG": str(home / "labgate.toml")}
    seen = set()
    for command in suggested_commands(output):
        res = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60, env=env)
        assert res.returncode == 0, (command, res.stdout, res.stderr)
        if "forward ls" in command:
            seen.add("forward ls")
            assert "centos1" in res.stdout and "198.51.100.1:4000" in res.stdout, res.stdout
        elif "import socket" in command:
            seen.add("probe")
            assert res.stdout.strip() == "10.9.0.6:hello", res  # forward #1, retargeted to the second machine
        elif "nft list table" in command:
            seen.add("nft")
            assert "table ip labgate_demo" in res.stdout, res.stdout
        elif command.startswith("curl "):
            seen.add("curl")
            assert [f["name"] for f in json.loads(res.stdout)["results"]] == ["centos1", "centos1"], res.stdout
        else:
            pytest.fail(f"unexpected suggestion {command!r}")
    assert {"probe", "nft"} <= seen, seen
    assert ("forward ls" in seen) == serving, seen


def test_demo_up_and_down(tmp_path: Path):
    prefix = new_prefix()
    try:
        up = labgate("demo", "--no-wait", "--prefix", prefix, "--port", str(free_port()))
        assert up.returncode == 0, up.stdout + up.stderr
        assert "'10.9.0.5:hello'" in up.stdout and "'10.9.0.6:hello'" in up.stdout
        assert sorted(list_labs(prefix)) == [f"{prefix}-cli", f"{prefix}-gw", f"{prefix}-lab"]
        assert f"demo --down --prefix {prefix}` removes it" in up.stdout
        assert "leftover" not in up.stdout  # labgate's server stopped its own children (conntrack)
        # labgate is gone, the lab (its services and forwarding table) stays: what is suggested still works.
        check_suggestions(up.stdout, serving=False, home=tmp_path)
    finally:
        remove_demo(prefix)


def test_demo_keeps_to_its_own_settings(tmp_path: Path):
    """LABGATE_* variables in the shell are for a real server: the demo neither writes to the database they name
    nor meets the rate limit they set (it got 429s and died with a traceback)."""
    prefix = new_prefix()
    elsewhere = tmp_path / "a-real-server.db"
    try:
        up = labgate("demo", "--no-wait", "--prefix", prefix, "--port", str(free_port()),
                     LABGATE_DATABASE=f"sqlite:///{elsewhere}", LABGATE_RATE_LIMIT="0.001",
                     LABGATE_RATE_LIMIT_BURST="1")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "'10.9.0.5:hello'" in up.stdout and "'10.9.0.6:hello'" in up.stdout
        assert "Traceback" not in up.stdout + up.stderr
        assert not elsewhere.exists()
        assert (state_dir(prefix) / "labgate.db").exists()
    finally:
        remove_demo(prefix)


# --- stopping ---------------------------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process, None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def descendants(root: int) -> dict[int, tuple[int, str]]:
    """{pid: (start time, name)} of every live process whose parent chain includes root."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[0] != "Z":
                parents[int(entry)] = st
    found: dict[int, tuple[int, str]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (_, ppid, start) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = (start, _comm(pid))
                frontier.append(pid)
    return found


def still_running(recorded: dict[int, tuple[int, str]]) -> list[str]:
    """Recorded processes that still run (the same process: same pid and start time; a zombie is dead)."""
    alive = []
    for pid, (start, name) in recorded.items():
        st = _stat(pid)
        if st is not None and st[2] == start and st[0] != "Z":
            alive.append(f"{pid} ({name})")
    return alive


class Output:
    """A subprocess's stdout, collected by a thread, with a bounded wait for a line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # EOF marker
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in line for line in self.lines):
                if (self.lines and self.lines[-1] == "") or time.monotonic() > deadline:
                    return False
                self._cond.wait(0.2)
        return True

    def text(self, timeout: float = 10) -> str:
        """What was read so far, after waiting up to `timeout` for the end of the output."""
        self._thread.join(timeout)
        with self._cond:
            return "".join(self.lines)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_demo_stops_cleanly_on_a_signal(signum: signal.Signals, tmp_path: Path):
    """(Bugs of issue 9: the demo blocked with no word on how to leave; it suggested `nc`, which nothing installs;
    and on SIGTERM or SIGHUP it died at once, leaving its `conntrack -E` child running.)"""
    prefix = new_prefix()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "labgate", "demo", "--prefix", prefix, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            start_new_session=True)  # the signal goes to the demo alone, not to its children
    try:
        out = Output(proc)
        assert out.wait_for(READY, timeout=120), out.text()
        text = out.text(timeout=0)
        ready_line = next(line for line in text.splitlines() if READY in line)
        assert "Ctrl-C" in ready_line
        assert f"demo --down --prefix {prefix}` removes the lab" in text
        check_suggestions(text, serving=True, home=tmp_path)
        # The demo serves as `labgate serve` does: a local client cannot make it believe X-Forwarded-Proto/-For.
        resp = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Forwarded-Proto": "https"}, timeout=30)
        assert resp.status_code == 200 and "strict-transport-security" not in resp.headers, resp.headers

        children = descendants(proc.pid)
        names = sorted(name for _, name in children.values())
        assert "conntrack" in names, children        # the check below is not vacuous
        assert len([n for n in names if n.startswith("python")]) == 4, children   # the lab's four services

        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 0, out.text()
        text = out.text()
        assert f"{signum.name}: stopping labgate" in text, text
        assert "leftover" not in text, text   # stopped cleanly, not by the last-resort sweep
        assert still_running(children) == [], text
        for ns in (f"{prefix}-cli", f"{prefix}-gw", f"{prefix}-lab"):
            assert namespace_pids(ns) == [], ns
        # Stopping serves no longer, but keeps the lab until --down.
        assert sorted(list_labs(prefix)) == [f"{prefix}-cli", f"{prefix}-gw", f"{prefix}-lab"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        remove_demo(prefix)
