"""Database faults under a running server (issue 11, "faults as tests"), on the in-memory kernel.

Each test breaks the SQLite file for real under a running labgate (its files made read-only with the immutable
attribute; the file renamed away; the file deleted) and checks what an operator and a user see:

- a change that cannot be stored is a 503 `database_unavailable` whose message names the database and the cause,
  never a 500 `internal`, and leaves neither a row nor a rule behind (a change whose kernel part was applied before
  its commit failed is taken back out of the kernel);
- `/healthz` says `degraded`, each gateway in `GET /api/v1/gateways` shows the database trouble (status not `ok`,
  a problem or last_error naming the database), one log line says what is wrong;
- what can still be served is: reads while the file can be read, and the kernel keeps every forward it had (a
  full re-render during the fault neither wipes nor changes it);
- once the file is fixed, labgate recovers by itself (no restart, no request needed: `/healthz` goes back to `ok`),
  changes are stored again in *that* file, and the database and the kernel agree.

The contract lives in the helpers below (`assert_database_unavailable`, `shows_database_trouble`,
`database_fault_logged`): one place to read, one place to change. The disk-full fault needs a mount of its own
and the real kernel: tests/kernel/test_faults.py.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import httpx
import pytest

from tests.api.conftest import FORWARDS, Api
from tests.conftest import make_settings
from tests.harness import running_server

# The faults of a SQLite file (read-only, deleted, full): on SQLite only.
pytestmark = pytest.mark.sqlite_only

T = TypeVar("T")

EXT = "198.51.100.1"
TABLE = "labgate_default"
SENTINEL_KEY = "0.0.0.0 . tcp . 0"  # render.SENTINELS: in every full render, never a forward
WAIT = 30.0
SUFFIXES = ("", "-wal", "-shm")

# What the error message and the log line must say for each cause (besides naming the database).
READ_ONLY = r"read.?only|not writable|permission|not permitted"
GONE = r"missing|gone|removed|deleted|replaced|moved|does not exist|no such file|not found"


# --- the contract ------------------------------------------------------------------------------------------------

def assert_database_unavailable(resp: httpx.Response, cause: str) -> dict[str, Any]:
    """A change the database cannot store: 503 `database_unavailable`, saying it is the database, and why."""
    assert resp.status_code == 503, (
        f"expected 503 database_unavailable, got {resp.status_code}: {resp.text[:500]}")
    err = resp.json()["error"]
    assert err["code"] == "database_unavailable", err
    assert "database" in err["message"].lower(), err
    assert re.search(cause, err["message"], re.I), f"the message does not say why ({cause}): {err}"
    return err


def is_database_unavailable(resp: httpx.Response) -> bool:
    return resp.status_code == 503 and resp.json().get("error", {}).get("code") == "database_unavailable"


def shows_database_trouble(gateway: dict[str, Any]) -> bool:
    """A gateway entry of GET /api/v1/gateways that tells an operator the database is in trouble."""
    texts = [p.get("message") or "" for p in gateway.get("problems", [])] + [gateway.get("last_error") or ""]
    return gateway["status"] != "ok" and any("database" in t.lower() for t in texts)


def database_fault_logged(caplog: pytest.LogCaptureFixture, cause: str) -> list[str]:
    """labgate's own warnings or errors that name the database and the cause."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("labgate")
            and "database" in r.getMessage().lower() and re.search(cause, r.getMessage(), re.I)]


# --- helpers -----------------------------------------------------------------------------------------------------

def wait_for(condition: Callable[[], T], what: str, timeout: float = WAIT) -> T:
    """Poll `condition` until it returns something true; fail saying `what` was awaited after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what} (last: {value!r})")
        threading.Event().wait(0.05)


def healthz(api: Api) -> str:
    return api.anon.get("/healthz").json()["status"]


def gateway(api: Api) -> dict[str, Any]:
    resp = api.admin.get("/api/v1/gateways")
    assert resp.status_code == 200, resp.text
    [gw] = resp.json()
    return gw


def kernel_forwards(api: Api) -> dict[tuple[str, int], tuple[int, str]]:
    """{(protocol, external port): (forward id, "target . port")} as the in-memory kernel holds it now."""
    kernel = api.server.kernel()
    ids = kernel.elements(TABLE, "ids")
    targets = kernel.elements(TABLE, "targets")
    out = {}
    for key, mark in ids.items():
        if key == SENTINEL_KEY:
            continue
        ext, proto, port = (part.strip() for part in key.split(" . "))
        assert ext == EXT, key
        out[(proto, int(port))] = (int(mark), targets.get(key))
    return out


def database_forwards(path: Path) -> dict[tuple[str, int], tuple[int, str]]:
    """The same, from the enabled forwards in the SQLite file itself (opened read-only: never created here)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT id, protocol, external_port, port_count, target_address, target_port "
                           "FROM forwards WHERE enabled").fetchall()
    finally:
        con.close()
    return {(proto, ext + i): (fid, f"{target} . {tport + i}")
            for fid, proto, ext, count, target, tport in rows for i in range(count)}


def assert_database_and_kernel_agree(api: Api, path: Path) -> None:
    in_db = database_forwards(path)
    assert kernel_forwards(api) == in_db, "the kernel does not hold exactly the enabled forwards of the database"


def forward_ids(path: Path) -> set[int]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return {row[0] for row in con.execute("SELECT id FROM forwards")}
    finally:
        con.close()


@contextmanager
def fault_api(path: Path) -> Iterator[Api]:
    """A server on SQLite file `path` with the in-memory kernel; the reconcile loop runs often (0.2 s) and renders
    the whole table every 0.5 s, so it keeps reading the database during a fault. Every request gets a fresh
    connection (a server that drops a connection after an error must not turn the next answer into a ReadError)."""
    settings = make_settings(f"sqlite:///{path}", reconcile_interval=0.2)
    settings.server.full_resync_interval = 0.5
    with ExitStack() as stack:
        srv = stack.enter_context(running_server(settings))
        tokens = {"alice": srv.token("alice"), "bob": srv.token("bob"), "root": srv.token("root", admin=True)}
        fresh = httpx.Limits(max_keepalive_connections=0)
        clients = {k: stack.enter_context(srv.client(t, limits=fresh)) for k, t in tokens.items()}
        anon = stack.enter_context(srv.client(limits=fresh))
        yield Api(srv, f"sqlite:///{path}", clients["alice"], clients["bob"], clients["root"], anon, tokens)


def full_sync_attempt(api: Api) -> None:
    """One whole-table render from the database now, as the periodic full resync does (it may fail: the fault)."""
    api.server.labgate.dataplane.request_full_sync("default")
    api.server.labgate.dataplane.reconcile_once()


def chattr(flag: str, *paths: Path) -> None:
    proc = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True)
    assert proc.returncode == 0, (f"chattr {flag} {' '.join(map(str, paths))} failed: {proc.stderr.strip()} "
                                  "(this test needs a filesystem with the immutable attribute under tmp_path)")


# --- the faults --------------------------------------------------------------------------------------------------

@pytest.mark.kernel  # root: the immutable attribute (chmod does not stop root, nor an already open descriptor)
def test_database_read_only_under_a_running_server(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.fail("this test makes the database immutable: it needs root and chattr (e2fsprogs)", pytrace=False)
    caplog.set_level(logging.INFO)
    path = tmp_path / "lg.db"
    with fault_api(path) as api:
        a = api.create(name="a")
        b = api.create(name="b", target_address="10.9.0.6")
        before_kernel = kernel_forwards(api)
        before_ids = forward_ids(path)
        files = [path, Path(f"{path}-wal")]   # not -shm: it is shared memory, not data (and mmap'd)
        assert files[1].exists(), "the database runs in WAL mode: its -wal file exists while it is open"
        chattr("+i", *files)
        try:
            # Every kind of change is refused, saying why; the delete and the disable reach the kernel before
            # their commit fails, so the kernel must be given its rules back.
            assert_database_unavailable(api.alice.post(FORWARDS, json={"target_address": "10.9.0.7",
                                                                       "target_port": 22}), READ_ONLY)
            assert_database_unavailable(api.alice.delete(f"{FORWARDS}/{a['id']}"), READ_ONLY)
            assert_database_unavailable(api.alice.patch(f"{FORWARDS}/{b['id']}", json={"enabled": False}),
                                        READ_ONLY)
            assert kernel_forwards(api) == before_kernel, "a change that was not stored is still in the kernel"
            assert api.server.kernel().cuts == [], "sessions were cut for a change that did not happen"
            # What can be served still is: reads (16 at once, so the server opens connections to the read-only
            # file: they must not stay read-only once it is fixed), and the kernel through a full re-render.
            with ThreadPoolExecutor(16) as pool:
                reads = list(pool.map(lambda _: api.alice.get(FORWARDS), range(32)))
            assert {r.status_code for r in reads} == {200}, {r.status_code: r.text[:300] for r in reads}
            assert {f["id"] for f in reads[0].json()["results"]} == {a["id"], b["id"]}
            full_sync_attempt(api)
            assert kernel_forwards(api) == before_kernel
            # Said: /healthz, the gateways, the log.
            wait_for(lambda: healthz(api) == "degraded", "/healthz says degraded while changes cannot be stored")
            gw = wait_for(lambda: shows_database_trouble(g := gateway(api)) and g,
                          "GET /api/v1/gateways shows the database trouble")
            assert gw["forwards"] == 2
            assert database_fault_logged(caplog, READ_ONLY), "no log line says the database is read-only"
        finally:
            chattr("-i", *files)
        # Fixed: labgate notices by itself, then takes changes again, into that file.
        wait_for(lambda: healthz(api) == "ok", "/healthz ok again once the database is writable")
        wait_for(lambda: not shows_database_trouble(gateway(api)) and gateway(api)["status"] == "ok",
                 "the gateway ok again")
        c = api.create(name="c", target_address="10.9.0.7")
        assert api.alice.delete(f"{FORWARDS}/{a['id']}").status_code == 204
        assert forward_ids(path) == before_ids - {a["id"]} | {c["id"]}
        assert_database_and_kernel_agree(api, path)


def _rename_away(path: Path, aside: Path) -> Callable[[], None]:
    """Move the database and its -wal/-shm into another folder; returns the fix (move them back)."""
    aside.mkdir()
    moved = []
    for suffix in SUFFIXES:
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.rename(src, aside / src.name)
            moved.append(src)

    def fix() -> None:
        for src in moved:
            os.rename(aside / src.name, src)

    return fix


def _delete_keeping_a_backup(path: Path, backup: Path) -> Callable[[], None]:
    """Take a consistent copy (SQLite's backup API), then delete the database and its -wal/-shm; returns the fix
    (the copy restored in place, mode 0600, as an operator restores a backup)."""
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(backup)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    for suffix in SUFFIXES:
        Path(f"{path}{suffix}").unlink(missing_ok=True)

    def fix() -> None:
        shutil.copyfile(backup, path)
        os.chmod(path, 0o600)

    return fix


@pytest.mark.parametrize("how", ["renamed", "deleted"])
def test_database_gone_under_a_running_server(tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str) -> None:
    """The file renamed away (fixed by renaming it back), or deleted (fixed by restoring a backup taken just
    before). SQLite keeps writing to an open file that is no longer at its path: a 201 would then be a change
    nobody will ever find again."""
    caplog.set_level(logging.INFO)
    path = tmp_path / "lg.db"
    with fault_api(path) as api:
        a = api.create(name="a")
        b = api.create(name="b", target_address="10.9.0.6")
        before_kernel = kernel_forwards(api)
        before_ids = forward_ids(path)
        if how == "renamed":
            fix = _rename_away(path, tmp_path / "aside")
        else:
            fix = _delete_keeping_a_backup(path, tmp_path / "backup.db")
        try:
            assert_database_unavailable(api.alice.post(FORWARDS, json={"target_address": "10.9.0.7",
                                                                       "target_port": 22}), GONE)
            assert_database_unavailable(api.alice.delete(f"{FORWARDS}/{a['id']}"), GONE)
            # A read is served from what is still open, or refused the same way: never a 500 or a 401.
            listed = api.alice.get(FORWARDS)
            assert listed.status_code == 200 or is_database_unavailable(listed), listed.text[:500]
            # The kernel keeps every forward, through a full re-render attempt too.
            full_sync_attempt(api)
            assert kernel_forwards(api) == before_kernel
            assert api.server.kernel().cuts == []
            wait_for(lambda: healthz(api) == "degraded", "/healthz says degraded while the database is gone")
            assert database_fault_logged(caplog, GONE), "no log line says the database file is gone"
            # labgate never puts a new, empty database where its own went missing.
            assert not path.exists(), "labgate created a new database file in place of the missing one"
        finally:
            fix()
        wait_for(lambda: healthz(api) == "ok", "/healthz ok again once the database is back")
        wait_for(lambda: gateway(api)["status"] == "ok", "the gateway ok again")
        c = api.create(name="c", target_address="10.9.0.7")
        assert api.alice.delete(f"{FORWARDS}/{b['id']}").status_code == 204
        # Stored in the file at the path (not in a file that is gone), and the kernel agrees with it.
        assert forward_ids(path) == before_ids - {b["id"]} | {c["id"]}
        assert_database_and_kernel_agree(api, path)
