"""The monitor's reading of one look at the cloud (openstack/topology.py), on values shaped like Neutron's answers:
which router serves which subnet, overlapping CIDRs kept apart, and the answers' odd corners."""

from __future__ import annotations

import ipaddress

import pytest

from labgate.config import OpenStackConfig, router_gateway_name, router_netns
from labgate.openstack.topology import Snapshot, TopologyError

R1, R2 = "8b1a3a4e-0c55-4a43-9d6a-5c2f0b7f1a01", "8b1a3a4e-0c55-4a43-9d6a-5c2f0b7f1a02"


def router(rid: str, ext: str | None, project: str = "p1") -> dict:
    info = {"network_id": "ext", "external_fixed_ips": [{"subnet_id": "s-ext", "ip_address": ext}]} if ext else None
    return {"id": rid, "name": f"r-{rid[-2:]}", "project_id": project, "external_gateway_info": info,
            "revision_number": 3}


def port(pid: str, owner: str, device: str, *ips: tuple[str, str], project: str = "p1") -> dict:
    return {"id": pid, "device_owner": owner, "device_id": device, "network_id": "n", "project_id": project,
            "fixed_ips": [{"subnet_id": s, "ip_address": a} for s, a in ips], "revision_number": 1}


def snapshot() -> Snapshot:
    # Two projects with the same private CIDR behind two routers; a third router without an external gateway.
    return Snapshot.parse(
        [router(R1, "198.51.100.10"), router(R2, "198.51.100.11", "p2"), router("r3", None)],
        [port("i1", "network:router_interface", R1, ("sa", "10.0.0.1")),
         port("i2", "network:router_interface_distributed", R2, ("sb", "10.0.0.1"), ("sb6", "fd00::1")),
         port("vm1", "compute:nova", "server-1", ("sa", "10.0.0.5")),
         port("vm2", "compute:nova", "server-2", ("sb", "10.0.0.5"), project="p2"),
         port("dhcp", "network:dhcp", "dhcp-1", ("sa", "10.0.0.2")),
         port("loose", "", "", ("sa", "10.0.0.9"))],
        [{"id": "sa", "cidr": "10.0.0.0/24", "network_id": "na", "project_id": "p1", "ip_version": 4},
         {"id": "sb", "cidr": "10.0.0.0/24", "network_id": "nb", "project_id": "p2", "ip_version": 4},
         {"id": "sb6", "cidr": "fd00::/64", "network_id": "nb", "project_id": "p2", "ip_version": 6}])


def test_routers_subnets_and_overlapping_cidrs_stay_apart() -> None:
    snap = snapshot()
    assert snap.routers[R1].external_address == ipaddress.IPv4Address("198.51.100.10")
    assert snap.routers["r3"].external_address is None
    subnets = snap.router_subnets()
    assert [s.id for s in subnets[R1]] == ["sa"] and [s.id for s in subnets[R2]] == ["sb"]  # IPv6 left out
    routers = snap.router_of_subnet()
    assert routers == {"sa": R1, "sb": R2}
    vm1, vm2 = snap.ports["vm1"], snap.ports["vm2"]
    # The same address behind two routers: each port is found only behind its own router.
    assert snap.port_behind(vm1, R1, routers) == ipaddress.IPv4Address("10.0.0.5")
    assert snap.port_behind(vm1, R2, routers) is None
    assert snap.port_behind(vm2, R2, routers) == ipaddress.IPv4Address("10.0.0.5")
    assert {p.id for p in snap.vm_ports()} == {"vm1", "vm2", "loose"}
    assert not snap.ports["loose"].attached and vm1.attached


def test_unreadable_answers_are_refused_by_name() -> None:
    with pytest.raises(TopologyError, match="port without 'id'"):
        Snapshot.parse([], [{"device_id": "x"}], [])
    # A bad address or CIDR is skipped, not fatal (one odd object must not stop the monitor).
    snap = Snapshot.parse([], [port("p", "compute:nova", "d", ("s", "not-an-ip"))],
                          [{"id": "s", "cidr": "garbage"}])
    assert snap.ports["p"].fixed_ips == () and snap.subnets == {}


def test_router_gateway_names_fit_the_gateway_rules() -> None:
    name = router_gateway_name(R1)
    assert name == "r8b1a3a4e0c554a439d6a5c2f0b7f1a" and len(name) == 31
    assert router_gateway_name(R1.upper()) == name
    assert router_netns(R1) == f"qrouter-{R1}"
    with pytest.raises(ValueError):
        router_gateway_name("../../etc")


def test_openstack_config_checks() -> None:
    cfg = OpenStackConfig(cloud="mycloud", router_port_range="4000-4100", projects=["0A1B" * 8])
    assert cfg.router_port_range == ["4000-4100"] and cfg.projects == ["0a1b" * 8]
    for bad in ({"cloud": "a b"}, {"cloud": "x", "router_port_range": ["4000-4100", "4050-4200"]},
                {"cloud": "x", "on_target_deleted": "keep"}, {"cloud": "x", "projects": ["$(rm -rf /)"]},
                {"cloud": "x", "monitor_interval": 0}):
        with pytest.raises(ValueError):
            OpenStackConfig(**bad)


def test_with_openstack_the_routers_are_the_gateways(tmp_path) -> None:
    from labgate.config import ConfigError, load_settings

    path = tmp_path / "labgate.toml"
    path.write_text('[openstack]\ncloud = "mycloud"\n')
    assert load_settings(path).gateway == []  # no implicit host-namespace gateway beside the routers
    path.write_text('[openstack]\ncloud = "mycloud"\n[[gateway]]\nname = "lab"\nrouter_id = "x"\n')
    with pytest.raises(ConfigError, match="set by the OpenStack monitor"):
        load_settings(path)
    path.write_text("[server]\n")
    assert [g.name for g in load_settings(path).gateway] == ["default"]
