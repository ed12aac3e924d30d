"""A labgate cluster for real (docs/operations.md, Cluster): one PostgreSQL, two API replicas (`labgate serve
--no-agent`) and two agents (`labgate agent`), each agent serving one of two gateway namespaces, all separate
processes. Forwards made through either replica carry traffic in the right namespace; a killed agent leaves its rules
in place, changes on its gateway answer 202 `pending` until it is back; the replica that runs the cluster-wide work
hands it over when it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from labgate.core.tokens import create_token
from labgate.db.migrate import upgrade
from labgate.db.session import Database
from labgate.lab import Service, tcp_request
from tests.harness import free_port, stop_process
from tests.kernel.conftest import kernel_ids
from tests.services.postgres import postgres_server

pytestmark = pytest.mark.kernel

INTERVAL = 1.0  # agent_interval: heartbeats and the singleton election


@pytest.fixture
def pg_url():
    with postgres_server() as url:
        yield url


class Cluster:
    def __init__(self, tmp: Path, pg_url: str, labs) -> None:
        self.tmp = tmp
        self.labs = labs
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports = {"r1": free_port(), "r2": free_port()}
        blocks = "".join(f'''
[[gateway]]
name = "gw{i}"
netns = "{lab.gateway_ns}"
external_address = "{lab.external_address}"
port_range = "4000-4099"
target_networks = ["{lab.lab_network}"]
''' for i, lab in enumerate(labs, 1))
        for name, port in self.ports.items():
            (tmp / f"{name}.toml").write_text(f'''
[server]
listen = "127.0.0.1:{port}"
database = "{pg_url}"
log_level = "info"
agent_interval = {INTERVAL}
agent_poll_interval = 0.5
agent_wait = 3
data_dir = "{tmp}/{name}-data"
''' + blocks)
        db = Database(pg_url)
        upgrade(db.engine)
        self.token = create_token(db, "root", admin=True)
        db.dispose()

    def start(self, name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "a")
        if name.startswith("r"):
            argv = ["serve", "--no-agent", "--config", str(self.tmp / f"{name}.toml")]
        else:  # a1 serves gw1, a2 serves gw2
            argv = ["agent", "--config", str(self.tmp / "r1.toml"), "--gateway", f"gw{name[1]}", "--name", name]
        proc = subprocess.Popen([sys.executable, "-m", "labgate", *argv], stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def client(self, replica: str) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.ports[replica]}", timeout=30,
                            headers={"Authorization": f"Bearer {self.token}"})

    def wait(self, what: str, check, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self.procs.items():
                assert proc.poll() is None or proc.returncode in (-9, 0), f"{name} exited:\n{self.log(name)}"
            try:
                found = check()
            except httpx.HTTPError:
                found = None
            if found:
                return found
            assert time.monotonic() < deadline, f"no {what} within {timeout} s"
            time.sleep(0.1)

    def ready(self, replica: str) -> None:
        self.wait(f"{replica} healthy", lambda: httpx.get(
            f"http://127.0.0.1:{self.ports[replica]}/healthz", timeout=1).status_code == 200)

    def agents_alive(self, replica: str = "r1") -> set[str]:
        with self.client(replica) as c:
            return {a["name"] for a in c.get("/api/v1/cluster").json()["agents"] if a["alive"]}

    def stop_all(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)


@pytest.fixture
def cluster(tmp_path, pg_url, lab, lab2):
    c = Cluster(tmp_path, pg_url, [lab, lab2])
    try:
        yield c
    finally:
        c.stop_all()


def gateway(c: httpx.Client, name: str) -> dict:
    return next(g for g in c.get("/api/v1/gateways").json() if g["name"] == name)


def test_two_replicas_two_agents_on_postgres(cluster, lab, lab2):
    for name in ("a1", "a2", "r1", "r2"):
        cluster.start(name)
    cluster.ready("r1")
    cluster.ready("r2")
    cluster.wait("both agents' heartbeats", lambda: cluster.agents_alive() == {"a1", "a2"})
    m1 = Service.start_tcp_echo(lab.lab_ns, lab.machine_addresses[0], 22, tag="m1")
    m2 = Service.start_tcp_echo(lab2.lab_ns, lab2.machine_addresses[0], 22, tag="m2")
    try:
        # A forward made through either replica is live in its own gateway's namespace: 201 once the agent applied.
        with cluster.client("r1") as c1, cluster.client("r2") as c2:
            r = c1.post("/api/v1/forwards", json={"gateway": "gw1", "target_address": lab.machine_addresses[0],
                                                  "target_port": 22})
            assert r.status_code == 201, r.text
            f1 = r.json()
            assert f1["status"] == "active", f1
            r = c2.post("/api/v1/forwards", json={"gateway": "gw2", "target_address": lab2.machine_addresses[0],
                                                  "target_port": 22})
            assert r.status_code == 201, r.text
            f2 = r.json()
            assert tcp_request(lab.client_ns, lab.external_address, f1["external_port"], "one") == "m1:one"
            assert tcp_request(lab2.client_ns, lab2.external_address, f2["external_port"], "two") == "m2:two"
            # Each namespace holds only its own gateway's table and forward.
            assert kernel_ids(lab.gateway_ns, "labgate_gw1") == {("tcp", f1["external_port"]): f1["id"]}
            assert kernel_ids(lab2.gateway_ns, "labgate_gw2") == {("tcp", f2["external_port"]): f2["id"]}
            assert kernel_ids(lab.gateway_ns, "labgate_gw2") == {}
            g1 = gateway(c2, "gw1")
            assert g1["status"] == "ok" and g1["agent"]["name"] == "a1" and g1["agent"]["alive"], g1
            assert g1["applied_generation"] == g1["generation"] >= 1

            # The agent of gw1 dies: its rules stay, a create on gw1 answers 202 pending, gw2 is untouched.
            cluster.procs["a1"].send_signal(signal.SIGKILL)
            cluster.procs["a1"].wait()
            assert tcp_request(lab.client_ns, lab.external_address, f1["external_port"], "still") == "m1:still"
            r = c2.post("/api/v1/forwards", json={"gateway": "gw1", "target_address": lab.machine_addresses[0],
                                                  "target_port": 22, "name": "later"})
            assert r.status_code == 202, r.text
            pending = r.json()
            assert pending["status"] == "pending" and pending["status_reason"], pending
            assert tcp_request(lab.client_ns, lab.external_address, pending["external_port"], "x") is None
            r = c1.post("/api/v1/forwards", json={"gateway": "gw2", "target_address": lab2.machine_addresses[0],
                                                  "target_port": 22})
            assert r.status_code == 201 and r.json()["status"] == "active", r.text
            cluster.wait("gw1 shown with its agent down", lambda: gateway(c1, "gw1")["status"] == "agent_down")
            assert c1.get(f"/api/v1/forwards/{f1['id']}").json()["status"] == "pending"

            # Its restart applies what was committed meanwhile.
            cluster.start("a1")
            cluster.wait("the pending forward active", lambda: c1.get(
                f"/api/v1/forwards/{pending['id']}").json()["status"] == "active")
            assert tcp_request(lab.client_ns, lab.external_address, pending["external_port"], "now") == "m1:now"
            assert gateway(c2, "gw1")["status"] == "ok"

            # A delete through a replica is applied by the agent before the answer: the port is closed.
            r = c1.delete(f"/api/v1/forwards/{f1['id']}")
            assert r.status_code == 204, r.text
            assert tcp_request(lab.client_ns, lab.external_address, f1["external_port"], "gone") is None
    finally:
        m1.stop()
        m2.stop()


def test_the_cluster_wide_work_moves_to_the_other_replica_when_its_holder_dies(cluster):
    cluster.start("r1")
    cluster.ready("r1")
    cluster.start("r2")
    cluster.ready("r2")

    def leader() -> str | None:
        with cluster.client("r2") as c:
            return c.get("/api/v1/cluster").json()["leader"]

    held_by = cluster.wait("a leader", leader)
    pids = {name: proc.pid for name, proc in cluster.procs.items()}
    holder = next(name for name, pid in pids.items() if held_by.endswith(f":{pid}"))
    other = "r2" if holder == "r1" else "r1"
    with cluster.client(holder) as c:
        assert c.get("/api/v1/cluster").json()["this_process_leads"] is True
    with cluster.client(other) as c:
        assert c.get("/api/v1/cluster").json()["this_process_leads"] is False
    os.kill(pids[holder], signal.SIGKILL)
    cluster.procs[holder].wait()
    killed = time.monotonic()

    def taken() -> bool:
        with cluster.client(other) as c:
            status = c.get("/api/v1/cluster").json()
        return status["this_process_leads"] and status["leader"].endswith(f":{pids[other]}")

    cluster.wait("the other replica leading", taken, timeout=10 * INTERVAL)
    took = time.monotonic() - killed
    assert "event=singleton_taken" in cluster.log(other)
    # Within one election interval (plus the time to answer this poll): recorded, not a speed limit.
    print(f"singleton taken over {took:.2f} s after the holder was killed (interval {INTERVAL} s)")
