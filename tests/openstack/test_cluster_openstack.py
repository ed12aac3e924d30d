"""OpenStack in a cluster (docs/operations.md, Cluster): the monitor runs on an API replica (no kernel) and records
the routers; the agent of a network node serves exactly the routers whose `qrouter-*` namespace is on its host,
and picks up a router whose namespace appears later (an L3 agent scheduling it there). Real Neutron; the
namespaces are real (the agent looks for them), the agent's kernel is the in-memory one."""

from __future__ import annotations

import subprocess
import time

import pytest

from labgate.config import OpenStackConfig, ServerConfig, Settings, router_gateway_name, router_netns
from labgate.dataplane.fake import FakeKernel
from labgate.service import Labgate
from tests.harness import database_url, running_server

pytestmark = pytest.mark.kernel  # it creates network namespaces

CIDR = "10.41.0.0/24"


def settings(neutron, tmp_path, projects: list[str]) -> Settings:
    s = Settings(
        server=ServerConfig(database=database_url(tmp_path, "lg.db"), dataplane="nft", rate_limit=0),
        gateway=[],
        openstack=OpenStackConfig(cloud=neutron.cloud, clouds_file=str(neutron.clouds_yaml), projects=projects,
                                  monitor_interval=3600))
    s.server.agent_wait = 5.0
    s.server.agent_interval = 0.2
    s.server.agent_poll_interval = 0.05
    return s


def add_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True)


def wait_for(check, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return found


def test_an_agent_serves_the_routers_whose_namespace_is_on_its_host(neutron, tmp_path) -> None:
    a = neutron.project_topology(cidr=CIDR, name="a")
    b = neutron.project_topology(cidr=CIDR, name="b")
    gw_a, gw_b = router_gateway_name(a.router.id), router_gateway_name(b.router.id)
    created: list[str] = []
    replica_settings = settings(neutron, tmp_path, [a.project_id, b.project_id])
    replica_settings.server.dataplane = "none"
    try:
        with running_server(replica_settings, api_only=True) as srv, \
                srv.client(srv.token("root", admin=True)) as api:
            report = srv.labgate.openstack.cycle()  # the replica's monitor records both routers
            assert report.error is None, report.error
            # This host is the network node of router a only.
            add_netns(router_netns(a.router.id))
            created.append(router_netns(a.router.id))
            kernels: dict[str, FakeKernel] = {}

            def make(cfg):
                kernels[cfg.name] = FakeKernel(addresses=[cfg.external_address, "127.0.0.1"],
                                               preferred=cfg.external_address)
                return kernels[cfg.name]

            agent = Labgate(settings(neutron, tmp_path, [a.project_id, b.project_id]), kernels=make,
                            agent_name="net1", agent_only=True)
            agent.start()
            try:
                assert agent.agent is not None and agent.agent.gateways == [gw_a]
                assert agent.singletons == []  # the monitor runs on the replica, not here
                made = api.post("/api/v1/forwards", json={"gateway": gw_a, "target_address": "10.41.0.5",
                                                          "target_port": 22})
                assert made.status_code == 201 and made.json()["status"] == "active", made.text
                assert len(kernels[gw_a].elements(f"labgate_{gw_a}", "ids")) == 2  # the forward and the sentinel
                waiting = api.post("/api/v1/forwards", json={"gateway": gw_b, "target_address": "10.41.0.5",
                                                             "target_port": 22})
                assert waiting.status_code == 202 and waiting.json()["status"] == "pending", waiting.text
                gateways = {g["name"]: g for g in api.get("/api/v1/gateways").json()}
                assert gateways[gw_a]["status"] == "ok" and gateways[gw_a]["agent"]["name"] == "net1"
                assert gateways[gw_b]["status"] == "no_agent"

                # Router b is scheduled here too: its namespace appears, the agent serves it and applies what waited.
                add_netns(router_netns(b.router.id))
                created.append(router_netns(b.router.id))
                wait_for(lambda: api.get(f"/api/v1/forwards/{waiting.json()['id']}").json()["status"] == "active")
                assert agent.agent.gateways == sorted([gw_a, gw_b])
                assert {g["name"]: g["status"] for g in api.get("/api/v1/gateways").json()} == {gw_a: "ok",
                                                                                                 gw_b: "ok"}
                # And when it moves away (its namespace deleted here), the agent stops serving it.
                subprocess.run(["ip", "netns", "del", router_netns(b.router.id)], check=True)
                created.remove(router_netns(b.router.id))
                wait_for(lambda: agent.agent.gateways == [gw_a])
            finally:
                agent.stop()
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False)
