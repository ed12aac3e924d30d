"""CLI and SDK tests: a real labgate server (uvicorn on a free loopback port, real SQLite file, the in-memory
kernel), spoken to by the SDK in this process and by `python -m labgate` run as a real subprocess.

The subprocess gets a controlled environment: HOME and the client config inside tmp_path, COLUMNS=200, and a PATH
made of a folder of stand-in client programs (ssh, xfreerdp, ...) that record their argv, plus the folder of the
Python interpreter (which holds none of those programs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from labgate.config import GatewayConfig
from tests.conftest import make_settings
from tests.harness import Server, database_url, free_port, running_server

FORWARDS = "/api/v1/forwards"
EXTERNAL = "198.51.100.1"
PYTHON_DIR = str(Path(sys.executable).parent)
# The forward fields of the API contract (issue 2). The API may add fields (it must rename none), so tests compare
# forwards on these keys and table rows on the columns they name, never on "exactly these keys".
FORWARD_KEYS = frozenset({"id", "gateway", "protocol", "external_address", "external_port", "port_count",
                          "target_address", "target_port", "name", "kind", "owner", "description", "enabled",
                          "allowed_sources", "status", "created_at", "updated_at"})


def contract(fwd: dict[str, Any]) -> dict[str, Any]:
    """A forward reduced to the contract's fields (all of which must be present)."""
    missing = FORWARD_KEYS - set(fwd)
    assert not missing, f"forward lacks {sorted(missing)}: {fwd}"
    return {k: fwd[k] for k in FORWARD_KEYS}


def subset(actual: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Every expected key is present in `actual` with exactly that value."""
    return {k: actual.get(k, KeyError) for k in expected} == expected
STANDIN_NAMES = ("ssh", "xfreerdp", "remmina", "vncviewer", "xdg-open", "filezilla")


# --- the server --------------------------------------------------------------------------------------------------
@dataclass
class Lab:
    """A running server, a token per user, and raw httpx clients to set up and check state independently of the
    SDK and CLI under test."""

    server: Server
    tokens: dict[str, str]
    http: dict[str, httpx.Client]

    @property
    def url(self) -> str:
        return self.server.url

    def create(self, user: str = "alice", **body: Any) -> dict[str, Any]:
        body.setdefault("target_address", "10.9.0.5")
        body.setdefault("target_port", 22)
        resp = self.http[user].post(FORWARDS, json=body)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def get(self, forward_id: int, user: str = "alice") -> httpx.Response:
        return self.http[user].get(f"{FORWARDS}/{forward_id}")

    def reset(self) -> None:
        """Remove every forward (as the admin), so each test starts from an empty database on a shared server."""
        for fwd in self.forwards("root"):
            resp = self.http["root"].delete(f"{FORWARDS}/{fwd['id']}")
            assert resp.status_code == 204, resp.text
        assert self.forwards("root") == []

    def forwards(self, user: str = "alice", **params: Any) -> list[dict[str, Any]]:
        resp = self.http[user].get(FORWARDS, params={"limit": 1000, **params})
        assert resp.status_code == 200, resp.text
        return resp.json()["results"]


@contextmanager
def lab_for(db_url: str, gateways: list[GatewayConfig] | None = None) -> Iterator[Lab]:
    with ExitStack() as stack:
        srv = stack.enter_context(running_server(make_settings(db_url, gateways=gateways)))
        tokens = {"alice": srv.token("alice"), "bob": srv.token("bob"), "root": srv.token("root", admin=True)}
        http = {k: stack.enter_context(srv.client(t)) for k, t in tokens.items()}
        yield Lab(srv, tokens, http)


@pytest.fixture(scope="module")
def shared_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_for(database_url(tmp_path_factory.mktemp("labgate-db"))) as a:
        yield a


@pytest.fixture
def lab(shared_lab: Lab) -> Lab:
    """One server per test module (starting one per test would double the suite's time), emptied before each
    test: gateway "default", external 198.51.100.1, ports 4000-4100, targets 10.9.0.0/24; users alice, bob and
    the admin root."""
    shared_lab.reset()
    return shared_lab


def gw(name: str = "default", *, port_range: list[str] | None = None,
       external_address: str = EXTERNAL) -> GatewayConfig:
    return GatewayConfig(name=name, external_address=external_address, port_range=port_range or ["4000-4100"],
                         target_networks=["10.9.0.0/24"])


@pytest.fixture
def closed_url() -> str:
    """A URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


# --- the CLI as a subprocess ---------------------------------------------------------------------------------------
@dataclass
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.returncode == 0, self
        return json.loads(self.stdout)

    def ok(self) -> "Result":
        assert self.returncode == 0, \
            f"{self.args} exited {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"
        return self


@dataclass
class Cli:
    home: Path
    config: Path
    bindir: Path
    env_extra: dict[str, str] = field(default_factory=dict)

    def env(self, path: str | None = None, **extra: str | None) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "LABGATE_CLIENT_CONFIG": str(self.config),
            "COLUMNS": "200",
            "PATH": path if path is not None else f"{self.bindir}{os.pathsep}{PYTHON_DIR}",
            "LC_ALL": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
        }
        env.update(self.env_extra)
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def __call__(self, *args: str, input: str | None = None, path: str | None = None, timeout: float = 30,
                 **env: str | None) -> Result:
        proc = subprocess.run([sys.executable, "-m", "labgate", *args], input=input, capture_output=True,
                              text=True, env=self.env(path, **env), cwd=self.home, timeout=timeout)
        return Result(tuple(args), proc.returncode, proc.stdout, proc.stderr)

    def parallel(self, *calls: tuple[str, ...], path: str | None = None, **env: str | None) -> list[Result]:
        """Run independent invocations concurrently (each is a separate process; this only saves wall time)."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda args: self(*args, path=path, **env), calls))

    def configure(self, url: str, token: str | None = None, *, context: str = "default", gateway: str | None = None,
                  host: str | None = None, extra_contexts: dict[str, dict[str, str]] | None = None,
                  kinds: dict[str, dict[str, int]] | None = None) -> None:
        """Write a client config by hand (not through the code under test)."""
        contexts = {context: {"url": url, "token": token, "gateway": gateway, "host": host},
                    **(extra_contexts or {})}
        lines = [f'current = "{context}"']
        for name, values in contexts.items():
            lines.append(f"[contexts.{name}]")
            lines += [f'{k} = "{v}"' for k, v in values.items() if v is not None]
        for kind, ports in (kinds or {}).items():
            lines.append(f"[kinds.{kind}]")
            lines += [f"{k} = {v}" for k, v in ports.items()]
        self.config.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o600)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    return Cli(home=home, config=home / ".config" / "labgate" / "config.toml", bindir=bindir)


@pytest.fixture
def logged_in(cli: Cli, lab: Lab) -> Cli:
    """The CLI with a config whose current context is alice on the test server."""
    cli.configure(lab.url, lab.tokens["alice"])
    return cli


def assert_cli_error(res: Result, exit_code: int, *message_parts: str, hint: str | None = None) -> tuple[str, str]:
    """The CLI's error contract: the exit code, nothing on stdout, and on stderr exactly one `error: ...` line
    followed by one non-empty `hint: ...` line. Returns (message, hint)."""
    assert res.returncode == exit_code, f"expected exit {exit_code}, got {res.returncode}: {res}"
    assert res.stdout == "", res
    lines = res.stderr.splitlines()
    assert len(lines) == 2, f"expected an error line and a hint line, got {lines!r}"
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: "), lines
    assert lines[1].startswith("hint: ") and lines[1][len("hint: "):].strip(), lines
    assert "Traceback" not in res.stderr
    for part in message_parts:
        assert part in lines[0], (part, lines[0])
    if hint is not None:
        assert hint in lines[1], (hint, lines[1])
    return lines[0][len("error: "):], lines[1][len("hint: "):]


# --- stand-in client programs --------------------------------------------------------------------------------------
STANDIN = """#!/bin/sh
# labgate test stand-in: append this program's name and argv as one JSON line to the record file.
{{
  printf '["%s"' "${{0##*/}}"
  for a in "$@"; do printf ',"%s"' "$a"; done
  printf ']\\n'
}} >> '{record}'
exit "${{LG_STANDIN_EXIT:-0}}"
"""


@dataclass
class Standins:
    bindir: Path
    record: Path

    def install(self, *names: str) -> None:
        for name in names:
            p = self.bindir / name
            p.write_text(STANDIN.format(record=self.record))
            p.chmod(0o755)

    def remove(self, name: str) -> None:
        (self.bindir / name).unlink()

    def calls(self) -> list[list[str]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def running(self) -> list[int]:
        """Pids of stand-ins still running (their command line names a script in our folder)."""
        prefix = f"{self.bindir}{os.sep}".encode()
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                except OSError:  # gone meanwhile (or not ours to read)
                    continue
                if any(arg.startswith(prefix) for arg in argv):
                    pids.append(int(entry))
        return pids

    def nothing_launched(self) -> bool:
        """No client was started by a `labgate` run that has returned, proven without waiting: a detached client
        is exec'd before the CLI goes on (Popen returns after the exec), and a stand-in writes its record before it
        exits. So with the CLI gone, a client it launched is either still running or already recorded: none running
        (looked at first) and no record (read after) mean none was launched."""
        running = self.running()
        assert running == [], f"stand-ins still running: {running}"
        return self.calls() == []

    def wait_calls(self, n: int = 1, timeout: float = 5.0) -> list[list[str]]:
        """Detached GUI clients start asynchronously: poll the record file."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            calls = self.calls()
            if len(calls) >= n:
                return calls
            time.sleep(0.02)
        return self.calls()


@pytest.fixture
def standins(cli: Cli, tmp_path: Path) -> Standins:
    """All stand-ins installed in the CLI's PATH folder; remove some to test fallbacks."""
    real = [n for n in (*STANDIN_NAMES, "scp", "wlfreerdp", "sensible-browser", "firefox", "chromium")
            if (Path(PYTHON_DIR) / n).exists()]
    assert not real, f"{PYTHON_DIR} (on the CLI's PATH) holds real client programs: {real}"
    s = Standins(cli.bindir, tmp_path / "argv.jsonl")
    s.install(*STANDIN_NAMES)
    return s


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of a rich table as dicts keyed by the header (one line per row: COLUMNS=200 is wide enough)."""
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    for line in text.splitlines():
        if "┃" in line:
            header = [c.strip() for c in line.strip().strip("┃").split("┃")]
        elif "│" in line:
            assert header is not None, text
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            assert len(cells) == len(header), (header, cells)
            rows.append(dict(zip(header, cells)))
    assert header is not None, f"no table in {text!r}"
    return rows
