"""The cluster roles on one database (SQLite, or PostgreSQL in the second pass), in one test process: an API
replica with no kernel (`serve --no-agent`) and an agent (`labgate agent`, here with the in-memory kernel). What a
replica answers depends on what the agent applied: 201 active, 202 pending (no agent, or a slow or dead one),
failed with the kernel's reason; and the gateways' view says which agent serves them. The same on PostgreSQL with
real kernels and processes: tests/kernel/test_cluster.py."""

from __future__ import annotations

import time
from contextlib import contextmanager

import pytest

from labgate.dataplane.fake import FakeKernel
from labgate.db import cluster
from labgate.service import Labgate
from tests.conftest import make_settings
from tests.harness import TEST_DATABASE, fake_kernels, running_server


def settings_for(url: str):
    s = make_settings(url)
    s.server.agent_wait = 2.0
    s.server.agent_interval = 0.2
    s.server.agent_poll_interval = 0.05
    return s


@contextmanager
def agent(url: str, name: str = "a1"):
    """An agent process's Labgate, its gateway's kernel in memory."""
    kernels: dict[str, FakeKernel] = {}

    def make(cfg):
        kernels[cfg.name] = FakeKernel(addresses=[cfg.external_address, "127.0.0.1"], preferred=cfg.external_address)
        return kernels[cfg.name]

    lg = Labgate(settings_for(url), kernels=make, agent_name=name, agent_only=True)
    lg.start()
    try:
        yield lg, kernels
    finally:
        lg.stop()


def ids_in(kernel: FakeKernel) -> set[int]:
    return {int(v, 16) for k, v in kernel.elements("labgate_default", "ids").items()
            if v is not None and not k.startswith("0.0.0.0")}


def wait_for(check, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return found


@pytest.fixture
def replica(database_url):
    with running_server(settings_for(database_url), api_only=True) as srv:
        yield srv


def test_no_agent_means_pending_and_says_so(replica):
    token = replica.token("alice")
    with replica.client(token) as c:
        r = c.post("/api/v1/forwards", json={"target_address": "10.9.0.5", "target_port": 22})
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "pending" and "no agent" in body["status_reason"]
        gw = c.get("/api/v1/gateways").json()[0]
        assert gw["status"] == "no_agent" and gw["agent"] is None
        assert gw["problems"][0]["check"] == "agent" and "labgate agent" in gw["problems"][0]["fix"]
        assert gw["generation"] == 1 and gw["applied_generation"] == 0


def test_the_agent_applies_what_the_replica_commits(replica, database_url):
    token = replica.token("alice")
    admin = replica.token("root", admin=True)
    with replica.client(token) as c:
        early = c.post("/api/v1/forwards", json={"target_address": "10.9.0.5", "target_port": 22}).json()
        assert early["status"] == "pending"
        with agent(database_url) as (lg, kernels):
            # What was committed before the agent started is in its first render, and recorded as applied.
            assert ids_in(kernels["default"]) == {early["id"]}
            assert c.get(f"/api/v1/forwards/{early['id']}").json()["status"] == "active"
            r = c.post("/api/v1/forwards", json={"target_address": "10.9.0.6", "target_port": 22})
            assert r.status_code == 201, r.text
            made = r.json()
            assert made["status"] == "active" and made["status_reason"] is None
            assert ids_in(kernels["default"]) == {early["id"], made["id"]}
            gw = c.get("/api/v1/gateways").json()[0]
            assert gw["status"] == "ok" and gw["agent"]["name"] == "a1" and gw["agent"]["alive"]
            assert gw["applied_generation"] == gw["generation"] == 2
            r = c.patch(f"/api/v1/forwards/{made['id']}", json={"enabled": False})
            assert r.status_code == 200 and r.json()["status"] == "disabled", r.text
            assert c.delete(f"/api/v1/forwards/{early['id']}").status_code == 204
            assert ids_in(kernels["default"]) == set()
            with replica.client(admin) as a:
                status = a.get("/api/v1/cluster").json()
                assert [x["name"] for x in status["agents"] if x["alive"]] == ["a1"]
                assert status["agents"][0]["gateways"] == ["default"]
                assert status["database"] == TEST_DATABASE and status["this_process_leads"] is True
                # A replica's /metrics shows the agents (which serve no HTTP) and how far each gateway is.
                metrics = a.get("/metrics").text
                assert 'labgate_forwards{gateway="default"} 1.0' in metrics
                assert 'labgate_gateway_generation{gateway="default"} 4.0' in metrics
                assert 'labgate_gateway_applied_generation{gateway="default"} 4.0' in metrics
                assert f'labgate_agent_up{{agent="a1",host="{status["agents"][0]["host"]}"}} 1.0' in metrics
            # The kernel refuses the next batch: the change is `failed` with the kernel's reason, not active.
            kernels["default"].refuse_matching("10.9.0.7")
            r = c.post("/api/v1/forwards", json={"target_address": "10.9.0.7", "target_port": 22})
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "failed" and r.json()["status_reason"], r.json()
            gw = c.get("/api/v1/gateways").json()[0]
            assert gw["status"] == "error" and gw["last_error"]
            kernels["default"].refuse_matching(None)
            # The next change renders the whole gateway again: the failed one goes in with it.
            r = c.post("/api/v1/forwards", json={"target_address": "10.9.0.8", "target_port": 22})
            assert r.status_code == 201, r.text
            assert len(ids_in(kernels["default"])) == 2
        # A cleanly stopped agent is shown stopped; its gateway's forwards are pending.
        with replica.client(admin) as a:
            assert 'labgate_agent_up{agent="a1",' in a.get("/metrics").text
            assert any(line.startswith('labgate_agent_up{agent="a1",') and line.endswith(" 0.0")
                       for line in a.get("/metrics").text.splitlines())
        gw = c.get("/api/v1/gateways").json()[0]
        assert gw["status"] == "agent_down" and gw["agent"]["alive"] is False
        assert "stopped" in gw["problems"][0]["message"]
        assert {f["status"] for f in c.get("/api/v1/forwards").json()["results"]} <= {"pending", "disabled"}
        r = c.post("/api/v1/forwards", json={"target_address": "10.9.0.9", "target_port": 22})
        assert r.status_code == 202 and r.json()["status"] == "pending"
        assert "not running" in r.json()["status_reason"]


def test_a_late_agent_turns_a_202_into_active(replica, database_url):
    token = replica.token("alice")
    with replica.client(token) as c:
        pending = c.post("/api/v1/forwards", json={"target_address": "10.9.0.5", "target_port": 80}).json()
        assert pending["status"] == "pending"
        with agent(database_url, "late"):
            wait_for(lambda: c.get(f"/api/v1/forwards/{pending['id']}").json()["status"] == "active")
            with replica.labgate.db.reader() as r:
                sync = cluster.gateway_syncs(r)["default"]
            assert (sync.generation, sync.applied_generation, sync.agent) == (1, 1, "late")


def test_an_auto_address_found_by_the_agent_is_known_to_the_replica(database_url):
    """external_address = "auto": only the agent can read it (in the gateway's namespace); it records it, and the
    replica shows it (gateways, forwards) and hands it to dynamic DNS."""
    settings = settings_for(database_url)
    settings.gateway[0].external_address = "auto"
    with running_server(settings, api_only=True) as replica:
        token = replica.token("alice")
        with replica.client(token) as c:
            assert c.get("/api/v1/gateways").json()[0]["external_address"] is None
            agent_settings = settings_for(database_url)
            agent_settings.gateway[0].external_address = "auto"
            lg = Labgate(agent_settings, kernels=fake_kernels(agent_settings), agent_name="a1", agent_only=True)
            lg.start()
            try:
                replica.labgate.elect()  # one election round: what every API process does each agent_interval
                assert c.get("/api/v1/gateways").json()[0]["external_address"] == "192.0.2.10"
                assert str(replica.labgate.dataplane.get("default").external_address) == "192.0.2.10"
                made = c.post("/api/v1/forwards", json={"target_address": "10.9.0.5", "target_port": 22})
                assert made.status_code == 201 and made.json()["external_address"] == "192.0.2.10", made.text
            finally:
                lg.stop()
