"""The `neutron` fixture works with openstacksdk from labgate's own venv: the topology issue 12's tests build, one-call
port listing with fields=, revision_number on a fixed-IP change, and project scoping through X-Project-Id."""

from __future__ import annotations

import uuid

import pytest
import yaml
from openstack.exceptions import ForbiddenException, NotFoundException

PORT_FIELDS = ["id", "device_id", "fixed_ips", "revision_number"]


def test_clouds_yaml_reaches_the_api(neutron):
    clouds = yaml.safe_load(neutron.clouds_yaml.read_text())
    cloud = clouds["clouds"][neutron.cloud]
    assert cloud["auth_type"] == "none" and cloud["network_endpoint_override"] == neutron.endpoint
    conn = neutron.admin()
    aliases = {e.alias for e in conn.network.extensions()}
    assert {"router", "external-net", "port-security", "standard-attr-revisions"} <= aliases


def test_topology_ports_and_project_scoping(neutron):
    project_a, project_b = neutron.new_project_id(), neutron.new_project_id()
    ext = neutron.external_network()
    assert ext.network.is_router_external and ext.network.provider_network_type == "flat"

    topo = neutron.project_topology(project_a, cidr="10.20.0.0/24")
    assert topo.router.project_id == project_a and topo.network.project_id == project_a
    gateway = topo.router.external_gateway_info
    assert gateway["network_id"] == ext.network.id
    assert gateway["external_fixed_ips"][0]["ip_address"].startswith("198.51.100.")
    assert topo.router_port.fixed_ips == [{"subnet_id": topo.subnet.id, "ip_address": "10.20.0.1"}]

    vm1, vm2 = str(uuid.uuid4()), str(uuid.uuid4())
    port1 = neutron.vm_port(topo, "10.20.0.11", device_id=vm1)
    port2 = neutron.vm_port(topo, "10.20.0.12", device_id=vm2)
    assert (port1.device_owner, port1.device_id, port1.project_id) == ("compute:nova", vm1, project_a)

    with neutron.project(project_a) as conn:
        # One call, only the fields asked for (fields= repeated in the query string).
        listed = list(conn.network.ports(device_owner="compute:nova", fields=PORT_FIELDS))
        by_id = {p.id: p for p in listed}
        assert set(by_id) == {port1.id, port2.id}
        assert by_id[port1.id].fixed_ips == [{"subnet_id": topo.subnet.id, "ip_address": "10.20.0.11"}]
        assert by_id[port1.id].device_id == vm1
        raw = conn.network.get("/ports", params={"fields": PORT_FIELDS, "device_id": vm1}).json()["ports"]
        assert len(raw) == 1 and set(raw[0]) == set(PORT_FIELDS)

        # A fixed-IP change bumps revision_number.
        before = by_id[port1.id].revision_number
        updated = conn.network.update_port(port1.id, fixed_ips=[{"subnet_id": topo.subnet.id,
                                                                 "ip_address": "10.20.0.21"}])
        assert updated.revision_number > before
        assert [ip["ip_address"] for ip in updated.fixed_ips] == ["10.20.0.21"]
        (relisted,) = conn.network.ports(device_id=vm1, fields=PORT_FIELDS)
        assert relisted.revision_number == updated.revision_number

        # Neutron 29's policy: a member cannot delete a compute:nova port; Nova (service role) deletes it.
        with pytest.raises(ForbiddenException):
            conn.network.delete_port(port2.id)
        neutron.delete_vm(project_a, vm2)
        assert {p.id for p in conn.network.ports(device_owner="compute:nova")} == {port1.id}
        # A port the user made and handed to a VM outlives it, detached.
        vm3 = str(uuid.uuid4())
        port3 = neutron.vm_port(topo, device_id=vm3)
        neutron.delete_vm(project_a, vm3, keep=(port3.id,))
        detached = conn.network.get_port(port3.id)
        assert (detached.device_id, detached.device_owner) == ("", "")
        conn.network.delete_port(port3.id)

    # Another project sees none of project A's ports, networks or routers; admin sees them all.
    with neutron.project(project_b) as conn_b:
        assert list(conn_b.network.ports()) == []
        with pytest.raises(NotFoundException):
            conn_b.network.get_port(port1.id)
        visible = {n.id for n in conn_b.network.networks()}
        assert topo.network.id not in visible and ext.network.id in visible  # external networks are visible to all
        assert list(conn_b.network.routers()) == []
    admin_ports = {p.id for p in neutron.admin().network.ports(project_id=project_a)}
    assert port1.id in admin_ports and topo.router_port.id in admin_ports
