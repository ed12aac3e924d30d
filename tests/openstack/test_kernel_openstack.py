"""Forwards that follow their VM, with real traffic: a real Neutron (the `neutron` fixture), labgate with its real
nftables dataplane in namespaces named `qrouter-<the real router id>`, and VM namespaces holding the real ports'
fixed IPs (tests/openstack/netlab.py). Monitor cycles are run by the test."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from labgate.config import OpenStackConfig, ServerConfig, Settings, router_gateway_name
from labgate.lab import Service, TcpSession, tcp_request
from tests.harness import running_server, database_url
from tests.openstack.netlab import NetLab, ip

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _root_and_tools():
    missing = [b for b in ("nft", "ip", "conntrack") if shutil.which(b) is None]
    if os.geteuid() != 0 or missing:
        pytest.fail(f"kernel tests need root and nft, ip, conntrack (missing: {missing or 'root'})", pytrace=False)


@pytest.fixture
def netlab():
    lab = NetLab().start()
    try:
        yield lab
    finally:
        lab.close()


def reply(netlab: NetLab, ext: str, port: int, payload: str = "ping") -> str | None:
    return tcp_request(netlab.client_ns, ext, port, payload, timeout=3)


def test_traffic_follows_the_vm_and_two_projects_stay_apart(neutron, netlab, tmp_path) -> None:
    cidr = "10.50.0.0/24"
    a, b = neutron.project_topology(cidr=cidr, name="ka"), neutron.project_topology(cidr=cidr, name="kb")
    vm_a = str(uuid.uuid4())
    port_a = neutron.vm_port(a, "10.50.0.5", device_id=vm_a)
    port_b = neutron.vm_port(b, "10.50.0.5")
    ext_a = a.router.external_gateway_info["external_fixed_ips"][0]["ip_address"]
    ext_b = b.router.external_gateway_info["external_fixed_ips"][0]["ip_address"]
    ns_a, ns_b = netlab.router(a.router, a.subnet), netlab.router(b.router, b.subnet)
    vmns_a, vmns_b = netlab.vm(ns_a, a.subnet, "10.50.0.5"), netlab.vm(ns_b, b.subnet, "10.50.0.5")
    services = [Service.start_tcp_echo(vmns_a, "10.50.0.5", 22, tag="vm-a"),
                Service.start_tcp_echo(vmns_b, "10.50.0.5", 22, tag="vm-b")]
    settings = Settings(
        server=ServerConfig(database=database_url(tmp_path, "lg.db"), dataplane="nft", rate_limit=0),
        gateway=[],
        openstack=OpenStackConfig(cloud=neutron.cloud, clouds_file=str(neutron.clouds_yaml), monitor_interval=3600,
                                  projects=[a.project_id, b.project_id]))
    try:
        with running_server(settings) as srv, srv.client(srv.token("root", admin=True)) as api:
            monitor = srv.labgate.openstack
            assert monitor.cycle().error is None
            made_a = api.post("/api/v1/forwards", json={"target_port_id": port_a.id, "target_port": 22})
            made_b = api.post("/api/v1/forwards", json={"target_port_id": port_b.id, "target_port": 22})
            assert made_a.status_code == made_b.status_code == 201, (made_a.text, made_b.text)
            fa, fb = made_a.json(), made_b.json()
            assert (fa["gateway"], fb["gateway"]) == (router_gateway_name(a.router.id),
                                                      router_gateway_name(b.router.id))
            # The same private address behind two routers: each forward reaches its own VM.
            assert reply(netlab, ext_a, fa["external_port"]) == "vm-a:ping"
            assert reply(netlab, ext_b, fb["external_port"]) == "vm-b:ping"

            # The VM's address changes in Neutron (and in the VM): established sessions are cut, traffic follows.
            session = TcpSession.open(netlab.client_ns, ext_a, fa["external_port"])
            assert session.exchange("one") == "vm-a:one"
            with neutron.project(a.project_id) as conn:
                conn.network.update_port(port_a.id, fixed_ips=[{"subnet_id": a.subnet.id,
                                                                "ip_address": "10.50.0.9"}])
            ip("-n", vmns_a, "addr", "add", "10.50.0.9/24", "dev", "vm0")
            services.append(Service.start_tcp_echo(vmns_a, "10.50.0.9", 22, tag="vm-a-moved"))
            assert monitor.cycle().changes == {"forward_retargeted": 1}
            assert session.exchange("two") is None  # cut, not left running to the old address
            session.close()
            assert reply(netlab, ext_a, fa["external_port"]) == "vm-a-moved:ping"
            assert reply(netlab, ext_b, fb["external_port"]) == "vm-b:ping"

            # The VM is deleted: its forward goes, and with it the way in.
            neutron.delete_vm(a.project_id, vm_a)
            assert monitor.cycle().changes == {"forward_deleted": 1}
            assert reply(netlab, ext_a, fa["external_port"]) is None
            assert reply(netlab, ext_b, fb["external_port"]) == "vm-b:ping"
    finally:
        for service in services:
            service.stop()
