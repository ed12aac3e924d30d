"""Faults as tests (issue 11), against the real kernel: each fault is caused for real under a running labgate, in
namespaces (network and mount) these tests create, and each test checks that labgate

- says what is wrong: the API's answer, `GET /api/v1/gateways` (status, problems, last_error), `/healthz`, the log;
- keeps serving what it can: traffic through the forwards it has, reads, other gateways;
- recovers by itself once the fault is fixed (no restart, no request needed);
- leaves the database and the kernel in agreement (`nft list map ip labgate_<gw> ids` in the gateway's namespace
  against the SQLite file itself).

Faults: the disk holding the database full (a small tmpfs in a private mount namespace of a `labgate serve`
subprocess); the kernel refusing every change to labgate's table (another program owns a table of that name:
`flags owner`); the gateway's namespace deleted under the service and created again; nft missing when labgate
starts (hidden in a private mount namespace); file descriptors exhausted by a crowd of idle loopback connections.
Nothing here touches the host's ruleset or mounts. The database faults that need no kernel (read-only, gone) are
in tests/api/test_faults.py, whose helpers state the contract for database faults.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import resource
import selectors
import shlex
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from labgate.core.tokens import create_token
from labgate.db.migrate import upgrade
from labgate.db.session import Database
from labgate.lab import MARKER, Lab, Service, remove_namespace, tcp_request
from tests.api.test_faults import assert_database_unavailable, shows_database_trouble, wait_for
from tests.conftest import make_settings
from tests.harness import free_port, running_server, stop_process
from tests.kernel.conftest import gateway_for, kernel_ids

# On SQLite only: about the embedded default (a SQLite file) and the faults of that file.
pytestmark = [pytest.mark.kernel, pytest.mark.sqlite_only]

WAIT = 60.0
FULL = r"full|no space"


# --- helpers: database and kernel ----------------------------------------------------------------------------

ENABLED_FORWARDS = "SELECT id, protocol, external_port, port_count FROM forwards WHERE enabled AND gateway = ?"
READER = """
import json, sqlite3, sys
con = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=30)
print(json.dumps(con.execute(sys.argv[2], (sys.argv[3],)).fetchall()))
"""


def database_ids(path: Path, gateway: str = "lab", *, mounts_of: int | None = None) -> dict[tuple[str, int], int]:
    """{(protocol, external port): forward id} of the gateway's enabled forwards, read from the SQLite file
    itself (opened read-only: never created here); with `mounts_of`, as that process sees it (SQLite resolves
    /proc/PID/root to "/", so the file is read by a reader that entered the process's mount namespace)."""
    if mounts_of is None:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = con.execute(ENABLED_FORWARDS, (gateway,)).fetchall()
        finally:
            con.close()
    else:
        proc = subprocess.run(["nsenter", "-t", str(mounts_of), "-m", "--", sys.executable, "-c", READER, str(path),
                               ENABLED_FORWARDS, gateway], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        rows = json.loads(proc.stdout)
    return {(proto, ext + i): fid for fid, proto, ext, count in rows for i in range(count)}


def kernel_forwards(ns: str, table: str = "labgate_lab") -> dict[tuple[str, int], int]:
    """kernel_ids without the sentinel element (port 0, id 0) every full render adds."""
    return {key: fid for key, fid in kernel_ids(ns, table).items() if key[1] != 0}


def assert_database_and_kernel_agree(db: Path, ns: str, gateway: str = "lab", *, mounts_of: int | None = None) -> None:
    table = "labgate_" + gateway
    wait_for(lambda: kernel_forwards(ns, table) == database_ids(db, gateway, mounts_of=mounts_of),
             f"the kernel's {table} ids map equal to the enabled forwards of the database", timeout=15)


def echo(lab: Lab, port: int, payload: str) -> str | None:
    return tcp_request(lab.client_ns, lab.external_address, port, payload)


# --- helpers: a `labgate serve` subprocess ---------------------------------------------------------------------

@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    token: str
    log: Path

    def client(self) -> httpx.Client:
        # A fresh connection per request: a crowd or a dropped connection must not turn an answer into a ReadError.
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=WAIT,
                            limits=httpx.Limits(max_keepalive_connections=0))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, \
            f"labgate serve exited ({self.proc.returncode}):\n{self.log_text()[-4000:]}"

    def seen(self, path: Path) -> Path:
        """`path` as the server sees it (through its own mount namespace)."""
        return Path(f"/proc/{self.proc.pid}/root{path}")

    def healthz(self) -> str | None:
        try:
            return httpx.get(self.url + "/healthz", timeout=5).json().get("status")
        except (httpx.HTTPError, ValueError):
            return None

    def gateway(self, name: str = "lab") -> dict[str, Any]:
        with self.client() as c:
            resp = c.get("/api/v1/gateways")
        assert resp.status_code == 200, resp.text
        return next(g for g in resp.json() if g["name"] == name)


def seed_database(path: Path) -> str:
    """A migrated database at `path` with an admin token (returned); closed, so no -wal file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = Database(f"sqlite:///{path}")
    try:
        upgrade(db.engine)
        return create_token(db, "root", admin=True)
    finally:
        db.dispose()


def gateway_toml(lab: Lab, name: str = "lab") -> str:
    return f'''
[[gateway]]
name = "{name}"
netns = "{lab.gateway_ns}"
external_address = "{lab.external_address}"
port_range = "4000-4099"
target_networks = ["{lab.lab_network}"]
'''


@contextmanager
def serve(tmp_path: Path, db: Path, token: str, labs: list[Lab], *, server: str = "", wrapper: list[str] = (),
          preexec=None) -> Iterator[Served]:
    """`labgate serve` on a free loopback port (reconcile pass every 0.2 s, full render every second), optionally
    started through `wrapper` (e.g. unshare + a shell that prepares a mount namespace, then execs the server, so
    the process is the server itself); stopped on exit, even after a failure."""
    port = free_port()
    config = tmp_path / "labgate.toml"
    config.write_text(f'''
[server]
listen = "127.0.0.1:{port}"
database = "sqlite:///{db}"
log_level = "info"
reconcile_interval = 0.2
full_resync_interval = 1
{server}
''' + "".join(gateway_toml(lab, "lab" if i == 0 else f"lab{i + 1}") for i, lab in enumerate(labs)))
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*wrapper, sys.executable, "-m", "labgate", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec)
    served = Served(proc, f"http://127.0.0.1:{port}", token, log)
    try:
        wait_for(lambda: served.assert_alive() or served.healthz() is not None, "labgate serve answers /healthz")
        yield served
    finally:
        stop_process(proc)


def in_private_mounts(script: str) -> list[str]:
    """A wrapper running `script` (sh) in a new mount namespace whose mounts propagate nowhere, then the server."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script + '\nexec "$@"', "sh"]


# --- 1. the disk full ------------------------------------------------------------------------------------------

def fill(path: Path) -> int:
    """Append to `path` until the filesystem is full; returns the bytes written. Called again before each step:
    whatever space frees up meanwhile (SQLite deletes its -wal file when its last connection closes) is taken
    again, as a runaway log would."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "ab", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        small = b"\0" * 512
        while True:  # the last blocks too
            try:
                written += f.write(small)
            except OSError:
                return written


def test_disk_full_under_a_running_server(lab, tmp_path: Path) -> None:
    m1 = lab.machine_addresses[0]
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    seed = tmp_path / "seed" / "lg.db"
    token = seed_database(seed)
    db = data / "lg.db"
    # The data folder is a 4 MiB tmpfs, mounted in the server's own mount namespace only.
    prepare = (f"mount -t tmpfs -o size=4m,mode=0700 labgate-fault-tmpfs {shlex.quote(str(data))}\n"
               f"cp {shlex.quote(str(seed))} {shlex.quote(str(db))}\nchmod 0600 {shlex.quote(str(db))}")
    with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"), \
            serve(tmp_path, db, token, [lab], wrapper=in_private_mounts(prepare)) as srv, srv.client() as c:
        assert os.path.ismount(srv.seen(data)) and not os.path.ismount(data)
        a = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22})
        b = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22})
        assert a.status_code == b.status_code == 201, a.text + b.text
        a, b = a.json(), b.json()
        assert echo(lab, a["external_port"], "x") == "vm1:x"
        before = kernel_forwards(lab.gateway_ns)
        assert before == database_ids(db, mounts_of=srv.proc.pid)

        filler = srv.seen(data / "filler")
        fill(filler)
        try:
            assert_database_unavailable(c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 80}),
                                        FULL)
            # The delete reaches the kernel before its commit fails: the kernel must get the rule back.
            fill(filler)
            assert_database_unavailable(c.delete(f"/api/v1/forwards/{a['id']}"), FULL)
            assert kernel_forwards(lab.gateway_ns) == before, "a delete that was not stored left the kernel"
            # Still served: traffic, reads.
            assert echo(lab, a["external_port"], "y") == "vm1:y"
            listed = c.get("/api/v1/forwards")
            assert listed.status_code == 200 and listed.json()["count"] == 2, listed.text[:300]
            # Said: /healthz, the gateway, the log.
            wait_for(lambda: srv.healthz() == "degraded", "/healthz says degraded while the disk is full")
            wait_for(lambda: shows_database_trouble(srv.gateway()), "GET /api/v1/gateways shows the database trouble")
            assert [line for line in srv.log_text().splitlines() if "database" in line.lower()
                    and re.search(FULL, line, re.I) and ("WARNING" in line or "ERROR" in line)], \
                "no log line says the database's disk is full"
            srv.assert_alive()
        finally:
            filler.unlink()

        wait_for(lambda: srv.healthz() == "ok", "/healthz ok again once the disk has room")
        wait_for(lambda: srv.gateway()["status"] == "ok", "the gateway ok again")
        c3 = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22})
        assert c3.status_code == 201, c3.text
        assert c.delete(f"/api/v1/forwards/{a['id']}").status_code == 204
        assert echo(lab, c3.json()["external_port"], "z") == "vm1:z"
        assert echo(lab, b["external_port"], "w") == "vm1:w"
        assert_database_and_kernel_agree(db, lab.gateway_ns, mounts_of=srv.proc.pid)


# --- 3a. the kernel refusing labgate's table -------------------------------------------------------------------

@contextmanager
def foreign_owner(ns: str, table: str) -> Iterator[subprocess.Popen]:
    """Another program takes table `table` in namespace `ns`: it deletes it and creates its own with `flags owner`
    (the kernel then refuses every change to that table from anyone else, EPERM) and keeps it while it runs. When
    it ends, the kernel removes its table."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "nft", "-i"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdin is not None
        proc.stdin.write(f"delete table ip {table}; add table ip {table} {{ flags owner; }}\n")
        proc.stdin.flush()
        wait_for(lambda: "flags owner" in subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "ip",
                                                          table], capture_output=True, text=True).stdout,
                 f"the foreign program owns {table}", timeout=15)
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def in_process_settings(tmp_path: Path, *labs: Lab):
    gateways = [gateway_for(lab, name="lab" if i == 0 else f"lab{i + 1}") for i, lab in enumerate(labs)]
    settings = make_settings(f"sqlite:///{tmp_path}/lg.db", dataplane="nft", gateways=gateways,
                             reconcile_interval=0.2)
    settings.server.full_resync_interval = 1
    return settings


def gateway_of(c: httpx.Client, name: str) -> dict[str, Any]:
    resp = c.get("/api/v1/gateways")
    assert resp.status_code == 200, resp.text
    return next(g for g in resp.json() if g["name"] == name)


def logged(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
            and all(w.lower() in r.getMessage().lower() for w in words)]


def test_the_kernel_refusing_every_change_to_labgate_table(lab, lab2, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    m1, m2 = lab.machine_addresses[0], lab2.machine_addresses[0]
    db = tmp_path / "lg.db"
    with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"), \
            Service.start_tcp_echo(lab2.lab_ns, m2, 22, tag="vm2"), \
            running_server(in_process_settings(tmp_path, lab, lab2)) as srv, \
            srv.client(srv.token("root", admin=True)) as c:
        a = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22, "gateway": "lab"}).json()
        assert echo(lab, a["external_port"], "x") == "vm1:x"
        with foreign_owner(lab.gateway_ns, "labgate_lab"):
            # Said: the gateway is in error with the kernel's reason, /healthz, its forwards, the log.
            gw = wait_for(lambda: (g := gateway_of(c, "lab"))["status"] == "error" and g,
                          "gateway lab in error while the kernel refuses its table")
            assert "not permitted" in (gw["last_error"] or "").lower(), gw
            assert c.get("/healthz").json()["status"] == "degraded"
            assert c.get(f"/api/v1/forwards/{a['id']}").json()["status"] == "error"
            refused = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 80, "gateway": "lab"})
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "dataplane_unavailable"
            assert "not permitted" in refused.json()["error"]["message"].lower()
            assert logged(caplog, "event=sync_failed", "gateway=lab", "not permitted")
            # Still served: the other gateway takes changes and forwards.
            other = c.post("/api/v1/forwards", json={"target_address": m2, "target_port": 22, "gateway": "lab2"})
            assert other.status_code == 201, other.text
            assert echo(lab2, other.json()["external_port"], "o") == "vm2:o"
            assert gateway_of(c, "lab2")["status"] == "ok"
        # The foreign program ended, and its table with it: labgate puts its own back by itself.
        wait_for(lambda: gateway_of(c, "lab")["status"] == "ok", "gateway lab ok again")
        assert c.get("/healthz").json()["status"] == "ok"
        assert echo(lab, a["external_port"], "y") == "vm1:y"
        again = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22, "gateway": "lab"})
        assert again.status_code == 201, again.text
        assert echo(lab, again.json()["external_port"], "z") == "vm1:z"
        assert_database_and_kernel_agree(db, lab.gateway_ns, "lab")
        assert_database_and_kernel_agree(db, lab2.gateway_ns, "lab2")


# --- 3b. the gateway's namespace deleted and created again -----------------------------------------------------

def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"ip {' '.join(args)}: {proc.stderr.strip()}"


def delete_gateway_namespace(lab: Lab) -> None:
    """What an L3 agent does when it removes a router: its ports go (so the old namespace, which labgate's
    threads and conntrack child may keep alive, carries nothing), then the namespace."""
    for ns, ifname in ((lab.client_ns, lab.client_ifname), (lab.lab_ns, lab.lab_ifname)):
        subprocess.run(["ip", "-n", ns, "link", "del", ifname], capture_output=True)  # its peer goes with it
    remove_namespace(lab.gateway_ns, kill_processes=False)


def create_gateway_namespace(lab: Lab) -> None:
    """...and when it builds it again: a new namespace of the same name, the same ports and addresses; no nft
    table, ip_forward off (labgate turns it on for a named namespace)."""
    _ip("netns", "add", lab.gateway_ns)
    _ip("-n", lab.gateway_ns, "link", "set", "dev", "lo", "alias", f"{MARKER} {lab.prefix}")
    _ip("-n", lab.gateway_ns, "link", "set", "dev", "lo", "up")
    _ip("-n", lab.client_ns, "link", "add", lab.client_ifname, "type", "veth", "peer", "name",
        lab.gateway_external_ifname, "netns", lab.gateway_ns)
    _ip("-n", lab.lab_ns, "link", "add", lab.lab_ifname, "type", "veth", "peer", "name", lab.gateway_lab_ifname,
        "netns", lab.gateway_ns)
    ext_len = lab.external_network.split("/")[1]
    lab_len = lab.lab_network.split("/")[1]
    for address in (lab.client_address, lab.client_address2):
        _ip("-n", lab.client_ns, "addr", "add", f"{address}/{ext_len}", "dev", lab.client_ifname)
    _ip("-n", lab.client_ns, "link", "set", "dev", lab.client_ifname, "up")
    _ip("-n", lab.gateway_ns, "addr", "add", f"{lab.external_address}/{ext_len}", "dev",
        lab.gateway_external_ifname)
    _ip("-n", lab.gateway_ns, "addr", "add", f"{lab.gateway_lab_address}/{lab_len}", "dev", lab.gateway_lab_ifname)
    _ip("-n", lab.gateway_ns, "link", "set", "dev", lab.gateway_external_ifname, "up")
    _ip("-n", lab.gateway_ns, "link", "set", "dev", lab.gateway_lab_ifname, "up")
    for address in lab.machine_addresses:
        _ip("-n", lab.lab_ns, "addr", "add", f"{address}/{lab_len}", "dev", lab.lab_ifname)
    _ip("-n", lab.lab_ns, "link", "set", "dev", lab.lab_ifname, "up")
    _ip("-n", lab.lab_ns, "route", "add", "default", "via", lab.gateway_lab_address, "dev", lab.lab_ifname)


def connection_events(c: httpx.Client, forward_id: int) -> list[dict]:
    return c.get("/api/v1/events", params={"kind": "connection", "forward_id": forward_id}).json()["results"]


def test_gateway_namespace_deleted_under_the_service_and_created_again(lab, lab2, tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    m1, m2 = lab.machine_addresses[0], lab2.machine_addresses[0]
    db = tmp_path / "lg.db"
    with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"), \
            Service.start_tcp_echo(lab2.lab_ns, m2, 22, tag="vm2"), \
            running_server(in_process_settings(tmp_path, lab, lab2)) as srv, \
            srv.client(srv.token("root", admin=True)) as c:
        a = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22, "gateway": "lab"}).json()
        watcher = srv.labgate.watchers["lab"]
        assert watcher.ready.wait(15), "the connection watcher of gateway lab never ran"
        assert echo(lab, a["external_port"], "x") == "vm1:x"
        wait_for(lambda: len(connection_events(c, a["id"])) == 1, "the connection's event")

        delete_gateway_namespace(lab)
        # Said: the gateway is in error naming its namespace, /healthz, changes refused, the log.
        gw = wait_for(lambda: (g := gateway_of(c, "lab"))["status"] == "error" and g,
                      "gateway lab in error while its namespace is gone")
        assert "namespace" in (gw["last_error"] or "").lower(), gw
        assert c.get("/healthz").json()["status"] == "degraded"
        refused = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 80, "gateway": "lab"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "dataplane_unavailable", \
            refused.text
        assert "namespace" in refused.json()["error"]["message"].lower()
        assert logged(caplog, "event=sync_failed", "gateway=lab", "namespace")
        # Still served: the other gateway.
        other = c.post("/api/v1/forwards", json={"target_address": m2, "target_port": 22, "gateway": "lab2"})
        assert other.status_code == 201, other.text
        assert echo(lab2, other.json()["external_port"], "o") == "vm2:o"

        create_gateway_namespace(lab)
        # Repaired by itself: the table in the new namespace, forwarding on, traffic, changes, connection events.
        wait_for(lambda: gateway_of(c, "lab")["status"] == "ok", "gateway lab ok in its new namespace")
        assert c.get("/healthz").json()["status"] == "ok"
        assert_database_and_kernel_agree(db, lab.gateway_ns, "lab")
        assert wait_for(lambda: echo(lab, a["external_port"], "y"), "traffic through the new namespace",
                        timeout=15) == "vm1:y"
        again = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22, "gateway": "lab"})
        assert again.status_code == 201, again.text
        assert echo(lab, again.json()["external_port"], "z") == "vm1:z"
        assert_database_and_kernel_agree(db, lab.gateway_ns, "lab")
        assert_database_and_kernel_agree(db, lab2.gateway_ns, "lab2")
        # New connections through the forward are events again (each try opens one: the watcher may need a
        # moment to notice the new namespace).
        try:
            wait_for(lambda: echo(lab, a["external_port"], "e") and len(connection_events(c, a["id"])) > 1,
                     "a connection event from the new namespace (the watcher follows the namespace)", timeout=20)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; watcher: seen={watcher.seen} last_error={watcher.last_error!r}; "
                                 f"gateway: {gateway_of(c, 'lab')}") from None


# --- 3c. nft missing when labgate starts -----------------------------------------------------------------------

def test_nft_missing_when_the_service_starts(lab, tmp_path: Path) -> None:
    """libnftables and the nft program hidden in the server's own mount namespace (a broken library file over
    libnftables.so.1; /usr/sbin without nft), as on a host where nftables is not installed; then installed."""
    m1 = lab.machine_addresses[0]
    db = tmp_path / "lg.db"
    # The database already holds a forward, and the kernel has lost its table (a reboot).
    with running_server(in_process_settings(tmp_path, lab)) as first:
        token = first.token("root", admin=True)
        with first.client(token) as c:
            a = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22}).json()
    for table in ("labgate_lab", "labgate_lab_usage"):
        subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "delete", "table", "ip", table], check=True)
    library = os.path.realpath("/usr/lib/x86_64-linux-gnu/libnftables.so.1")
    assert os.path.exists(library), "libnftables.so.1 is not where Debian puts it"
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    q = shlex.quote
    hide = (f"mount --bind /dev/null {q(library)}\n"
            f"mount --bind /usr/sbin {q(str(sbin))}\n"
            "mount -t tmpfs -o size=1m,mode=0755 labgate-fault-sbin /usr/sbin\n"
            f"for f in {q(str(sbin))}/*; do [ \"${{f##*/}}\" = nft ] || ln -s \"$f\" /usr/sbin/; done")
    with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"), \
            serve(tmp_path, db, token, [lab], wrapper=in_private_mounts(hide)) as srv, srv.client() as c:
        assert not os.path.exists(srv.seen(Path("/usr/sbin/nft"))) and os.path.exists("/usr/sbin/nft")
        # Said: the gateway in error naming nft, /healthz, changes refused, the log; reads still served.
        gw = wait_for(lambda: (g := srv.gateway())["status"] == "error" and g, "gateway lab in error without nft")
        assert "nft" in (gw["last_error"] or "").lower(), gw
        assert srv.healthz() == "degraded"
        refused = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 80})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "dataplane_unavailable", \
            refused.text
        listed = c.get(f"/api/v1/forwards/{a['id']}")
        assert listed.status_code == 200 and listed.json()["status"] == "error", listed.text
        assert [line for line in srv.log_text().splitlines() if "gateway=lab" in line and "nft" in line
                and "ERROR" in line], "no log line says nft cannot be used"
        # Installed: labgate finds it by itself and restores the forwards of the database.
        subprocess.run(["nsenter", "-t", str(srv.proc.pid), "-m", "umount", "/usr/sbin"], check=True)
        subprocess.run(["nsenter", "-t", str(srv.proc.pid), "-m", "umount", library], check=True)
        wait_for(lambda: srv.gateway()["status"] == "ok", "gateway lab ok once nft is there")
        assert srv.healthz() == "ok"
        assert echo(lab, a["external_port"], "x") == "vm1:x"
        again = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22})
        assert again.status_code == 201, again.text
        assert echo(lab, again.json()["external_port"], "y") == "vm1:y"
        assert_database_and_kernel_agree(db, lab.gateway_ns)


# --- 4. descriptor exhaustion ----------------------------------------------------------------------------------

NOFILE = 256
CROWD = 600  # idle loopback connections: more than twice the descriptors the server has


def open_crowd(port: int, count: int) -> list[socket.socket]:
    """`count` loopback connections that each send the start of a request and nothing more (a request whose
    headers never finish). Non-blocking: the test never waits on one."""
    crowd: list[socket.socket] = []
    selector = selectors.DefaultSelector()
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if sock.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
            sock.close()
            continue
        crowd.append(sock)
        selector.register(sock, selectors.EVENT_WRITE)
    pending = len(crowd)
    deadline = time.monotonic() + 20  # those still connecting then finish on their own (SYN retries)
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1):
            try:
                key.fileobj.send(b"GET /api/v1/forwards HTTP/1.1\r\n")  # type: ignore[union-attr]
            except OSError:
                pass
            selector.unregister(key.fileobj)
            pending -= 1
    selector.close()
    return crowd


def descriptors_of(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


@pytest.mark.parametrize("max_connections", [0, 4096], ids=["bound-from-the-limit", "bound-above-the-limit"])
def test_descriptor_exhaustion_by_idle_connections(lab, tmp_path: Path, max_connections: int) -> None:
    """A `labgate serve` allowed 256 descriptors (soft and hard: it cannot raise them) and a crowd of idle
    loopback connections that hold their slot for a minute (header_timeout = 60). With the connection bound
    derived from the limit the crowd takes every connection slot; with max_connections set above the limit it
    would take every descriptor. Either way the process must live, its dataplane must keep the descriptors it
    needs (a map flushed by hand during the crowd is repaired during the crowd), and it must recover when the
    crowd leaves."""
    m1 = lab.machine_addresses[0]
    db = tmp_path / "lg.db"
    token = seed_database(db)

    def limit_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

    crowd: list[socket.socket] = []
    with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"), \
            serve(tmp_path, db, token, [lab], server=f"header_timeout = 60\nmax_connections = {max_connections}",
                  preexec=limit_descriptors) as srv:
        try:
            with srv.client() as c:
                a = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22})
            assert a.status_code == 201, a.text
            a = a.json()
            assert echo(lab, a["external_port"], "x") == "vm1:x"
            before = kernel_forwards(lab.gateway_ns)

            crowd = open_crowd(int(srv.url.rsplit(":", 1)[1]), CROWD)
            # The fault: every connection slot (or every descriptor) is taken.
            wait_for(lambda: srv.assert_alive() or "event=connections_refused" in srv.log_text()
                     or descriptors_of(srv.proc.pid) >= NOFILE,
                     "the crowd fills the server's connection slots or its descriptors")
            srv.assert_alive()
            # Still served: the dataplane repairs a flushed map while the crowd is there.
            subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "flush", "map", "ip", "labgate_lab",
                            "ids"], check=True)
            try:
                wait_for(lambda: kernel_forwards(lab.gateway_ns) == before,
                         "the flushed ids map repaired during the crowd", timeout=15)
                repaired_during_crowd = None
            except AssertionError as exc:
                repaired_during_crowd = str(exc)
            srv.assert_alive()
        finally:
            for sock in crowd:
                sock.close()  # the crowd leaves: the fault is over

        # Recovered by itself.
        wait_for(lambda: srv.assert_alive() or srv.healthz() == "ok", "/healthz ok once the crowd left")
        wait_for(lambda: srv.gateway()["status"] == "ok", "the gateway ok once the crowd left")
        with srv.client() as c:
            again = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22})
        assert again.status_code == 201, again.text
        assert echo(lab, a["external_port"], "y") == "vm1:y"
        assert echo(lab, again.json()["external_port"], "z") == "vm1:z"
        assert_database_and_kernel_agree(db, lab.gateway_ns)
        srv.assert_alive()
        text = srv.log_text()
        assert "Unable to initialize Netlink socket" not in text
        assert repaired_during_crowd is None, (
            f"{repaired_during_crowd}: the crowd took the descriptors the dataplane needs; server log:\n"
            + "\n".join(line for line in text.splitlines() if "labgate.dataplane" in line)[-3000:])
        emfile = text.count("Too many open files")
        assert emfile == 0, f"the process ran out of descriptors ({emfile} 'Too many open files' in its log)"
        assert "event=connections_refused" in text, "the server never said it refused connections"
