"""labgate's reading of a real Neutron (openstack/cloud.py): one look is three listings whatever the number of
ports, paged by marker when there are more than a page; what it reads is what Neutron holds; failures say why."""

from __future__ import annotations

import ipaddress
import uuid

import pytest

from labgate.config import OpenStackConfig
from labgate.openstack import cloud as cloud_module
from labgate.openstack.cloud import Cloud, CloudError


def make_cloud(neutron, **kw) -> Cloud:
    return Cloud(OpenStackConfig(cloud=neutron.cloud, clouds_file=str(neutron.clouds_yaml), **kw))


def test_one_look_reads_routers_interfaces_and_ports(neutron, monkeypatch) -> None:
    topo = neutron.project_topology(cidr="10.31.0.0/24")
    vm = str(uuid.uuid4())
    port = neutron.vm_port(topo, "10.31.0.7", device_id=vm)
    cloud = make_cloud(neutron)
    snap = cloud.snapshot()
    assert cloud.calls == 3
    router = snap.routers[topo.router.id]
    assert router.project_id == topo.project_id
    assert router.external_address == ipaddress.IPv4Address(
        topo.router.external_gateway_info["external_fixed_ips"][0]["ip_address"])
    assert [str(s.cidr) for s in snap.router_subnets()[topo.router.id]] == ["10.31.0.0/24"]
    seen = snap.ports[port.id]
    assert seen.device_id == vm and seen.fixed_ips == ((topo.subnet.id, ipaddress.IPv4Address("10.31.0.7")),)
    assert snap.port_behind(seen, topo.router.id, snap.router_of_subnet()) == ipaddress.IPv4Address("10.31.0.7")

    # More objects than a page: marker paging reads them all, one call per page.
    monkeypatch.setattr(cloud_module, "PAGE", 2)
    paged = make_cloud(neutron)
    again = paged.snapshot()
    assert again.ports.keys() == snap.ports.keys() and again.routers.keys() == snap.routers.keys()
    pages = sum(len(x) // 2 + 1 for x in (snap.routers, snap.ports, snap.subnets))
    assert paged.calls == pages > 3


def test_project_filter_and_a_single_port(neutron) -> None:
    mine = neutron.project_topology(cidr="10.32.0.0/24")
    other = neutron.project_topology(cidr="10.32.0.0/24")  # the same CIDR, another project
    cloud = make_cloud(neutron, projects=[mine.project_id])
    snap = cloud.snapshot()
    assert mine.router.id in snap.routers and other.router.id not in snap.routers
    # Ports and subnets are not filtered: VMs of other projects sit on shared networks behind these routers.
    assert {mine.project_id, other.project_id} <= {p.project_id for p in snap.ports.values()}
    assert {mine.subnet.id, other.subnet.id} <= set(snap.subnets)
    port = neutron.vm_port(mine, "10.32.0.9")
    # Which ports exist, in one call: the check a port missing from a listing gets before its forwards go.
    before = cloud.calls
    assert cloud.existing_ports([port.id, str(uuid.uuid4())]) == {port.id} and cloud.calls == before + 1
    assert cloud.routed([mine.subnet.id]) and not cloud.routed([str(uuid.uuid4())])
    assert cloud.port(port.id).fixed_ips[0][1] == ipaddress.IPv4Address("10.32.0.9")
    assert cloud.port(str(uuid.uuid4())) is None


def test_an_unreachable_cloud_is_a_cloud_error(neutron, tmp_path) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  gone:\n    auth_type: none\n    network_endpoint_override: http://127.0.0.1:9/\n")
    cloud = Cloud(OpenStackConfig(cloud="gone", clouds_file=str(clouds), api_timeout=2))
    with pytest.raises(CloudError, match="network /routers"):
        cloud.snapshot()
    missing = Cloud(OpenStackConfig(cloud="nowhere", clouds_file=str(clouds)))
    with pytest.raises(CloudError, match="cannot use cloud 'nowhere'"):
        missing.snapshot()


def test_a_neutron_that_caps_its_pages_is_still_read_whole(neutron, tmp_path_factory) -> None:
    """Neutron caps `limit` at its pagination_max_limit (deployments set it, often below labgate's page of 1,000):
    a short page is then not the last one. Read as the last, the rest of the ports would look deleted and the
    monitor would delete their forwards."""
    from tests.openstack.neutron_api import NeutronServer

    capped = NeutronServer(tmp_path_factory.mktemp("neutron-capped"), neutron.python,
                           extra_conf="[DEFAULT]\npagination_max_limit = 2\n")
    try:
        capped.start()
        topo = capped.project_topology(cidr="10.33.0.0/24")
        for i in range(3):
            capped.vm_port(topo, f"10.33.0.{10 + i}")
        want = {p.id for p in capped.admin().network.ports()}
        cloud = Cloud(OpenStackConfig(cloud=capped.cloud, clouds_file=str(capped.clouds_yaml)))
        snap = cloud.snapshot()
        assert set(snap.ports) == want and len(want) >= 5
        assert topo.router.id in snap.routers and topo.subnet.id in snap.subnets
    finally:
        capped.stop()
