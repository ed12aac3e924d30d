"""Descriptor exhaustion against the real dataplane: a crowd of idle connections to a `labgate serve` allowed 256
descriptors (its gateway in a test namespace, re-checked every 0.2 s) neither ends the process nor stops the
kernel side; and libnftables is never called without a descriptor to spare (nft_ctx_new would exit())."""

from __future__ import annotations

import resource
import selectors
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import httpx
import pytest

from labgate.core.tokens import create_token
from labgate.db.migrate import upgrade
from labgate.db.session import Database
from tests.harness import free_port, stop_process, database_url
from tests.kernel.conftest import kernel_ids

pytestmark = pytest.mark.kernel

WAIT = 60
CROWD = 600          # idle connections opened, more than twice the descriptor limit
NOFILE = 256


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))  # hard too: serve cannot raise it


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    for _ in range(int(WAIT / 0.05)):
        assert proc.poll() is None, f"labgate serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(url + "/healthz", timeout=2).json().get("status") == "ok":
                return
        except (httpx.HTTPError, ValueError):
            pass
        threading.Event().wait(0.05)
    raise AssertionError(f"labgate serve never said ok:\n{log.read_text()[-3000:]}")


def test_a_crowd_of_idle_connections_neither_kills_the_server_nor_its_dataplane(lab, tmp_path: Path) -> None:
    port = free_port()
    db_url = database_url(tmp_path, "lg.db")
    config = tmp_path / "labgate.toml"
    config.write_text(f'''
[server]
listen = "127.0.0.1:{port}"
database = "{db_url}"
log_level = "info"
reconcile_interval = 0.2
header_timeout = 10

[[gateway]]
name = "lab"
netns = "{lab.gateway_ns}"
external_address = "{lab.external_address}"
port_range = "4000-4099"
target_networks = ["{lab.lab_network}"]
''')
    db = Database(db_url)
    upgrade(db.engine)
    token = create_token(db, "root", admin=True)
    db.dispose()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "labgate", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_limit_descriptors)
    crowd: list[socket.socket] = []
    try:
        _wait_ready(url, proc, log)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        assert f"Max open files            {NOFILE}                  {NOFILE}" in limits
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=WAIT) as c:
            first = c.post("/api/v1/forwards", json={"target_address": lab.machine_addresses[0], "target_port": 22})
            assert first.status_code == 201, first.text

        failed_connects = 0
        for _ in range(CROWD):
            try:
                crowd.append(socket.create_connection(("127.0.0.1", port), timeout=WAIT))
            except OSError:
                failed_connects += 1
        assert len(crowd) >= NOFILE, f"only {len(crowd)} connections opened ({failed_connects} failed)"

        # Every one of them is closed by the server: refused at once (503) beyond the bound, or after
        # header_timeout for those it counted (long enough that, on a loaded machine, the counted ones are still
        # open while the rest of the crowd arrives: else they free their room and nobody is refused). Meanwhile the dataplane was re-checked several times.
        refused = 0
        selector = selectors.DefaultSelector()
        for sock in crowd:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, bytearray())
        open_ = len(crowd)
        while open_:
            events = selector.select(timeout=WAIT)
            assert events, f"{open_} idle connections were never closed by the server"
            for key, _ in events:
                try:
                    chunk = key.fileobj.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    key.data.extend(chunk)
                    continue
                if key.data.startswith(b"HTTP/1.1 503 "):
                    refused += 1
                selector.unregister(key.fileobj)
                open_ -= 1
        selector.close()
        assert proc.poll() is None, f"labgate serve died:\n{log.read_text()[-3000:]}"
        assert refused > 0, "no connection was refused: the connection bound never applied"

        # The server and its kernel side work as before.
        assert httpx.get(url + "/healthz", timeout=WAIT).json() == {"status": "ok"}
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=WAIT) as c:
            second = c.post("/api/v1/forwards", json={"target_address": lab.machine_addresses[0],
                                                      "target_port": 80})
            assert second.status_code == 201, second.text
            [gateway] = c.get("/api/v1/gateways").json()
            assert gateway["status"] == "ok", gateway
        in_kernel = kernel_ids(lab.gateway_ns, "labgate_lab")
        for fwd in (first.json(), second.json()):
            assert in_kernel.get(("tcp", fwd["external_port"])) == fwd["id"], in_kernel
        text = log.read_text()
        assert "Unable to initialize Netlink socket" not in text
        assert "event=connections_refused" in text
    finally:
        for sock in crowd:
            sock.close()
        stop_process(proc)


GUARD_SCRIPT = textwrap.dedent("""
    import os, resource, sys
    from labgate.dataplane.kernel import KernelError, NamespaceKernel

    kernel = NamespaceKernel(sys.argv[1])
    print("before:", kernel.table_shape("labgate_absent"), flush=True)   # libnftables loaded, namespace entered
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
    held = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    try:
        kernel.table_shape("labgate_absent")
        print("listed without descriptors", flush=True)
    except KernelError as exc:
        print("refused:", exc, flush=True)
    for fd in held:
        os.close(fd)
    print("after:", kernel.table_shape("labgate_absent"), flush=True)
    kernel.close()
    print("alive", flush=True)
""")


def test_no_descriptor_left_is_a_kernel_error_not_an_exit(lab) -> None:
    proc = subprocess.run([sys.executable, "-c", GUARD_SCRIPT, lab.gateway_ns], capture_output=True, text=True,
                          timeout=WAIT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "before: None"
    assert lines[1].startswith("refused: checking tables: too few file descriptors free"), lines
    assert lines[2:] == ["after: None", "alive"], lines
