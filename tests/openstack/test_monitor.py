"""Routers as gateways and forwards that follow their VM, against a real Neutron (the `neutron` fixture) and a real
labgate server with the in-memory kernel (the kernel tests in tests/kernel/test_openstack.py pass real traffic).

Each test builds its own projects and asks labgate to serve only those (`projects`), so tests sharing the
session's Neutron never see each other's routers. Monitor cycles are run by the test (`cycle()`), not waited for.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator

import httpx
import pytest

from labgate.config import OpenStackConfig, ServerConfig, Settings, router_gateway_name
from labgate.core.tokens import create_token
from tests.harness import Server, running_server, database_url

CIDR = "10.40.0.0/24"


@contextmanager
def labgate(neutron, tmp_path, projects: list[str], **openstack) -> Iterator[Server]:
    settings = Settings(
        server=ServerConfig(database=database_url(tmp_path, "lg.db"), dataplane="none", rate_limit=0),
        gateway=[],
        openstack=OpenStackConfig(cloud=neutron.cloud, clouds_file=str(neutron.clouds_yaml), projects=projects,
                                  monitor_interval=3600, **openstack))
    with running_server(settings) as srv:
        cycle(srv)
        yield srv


def cycle(srv: Server):
    report = srv.labgate.openstack.cycle()
    assert report.error is None, report.error
    return report


def admin(srv: Server) -> httpx.Client:
    return srv.client(srv.token("root", admin=True))


def kernel_targets(srv: Server, gateway: str) -> set[str]:
    """The "external . proto . port : target . port" elements the gateway's kernel holds (sentinel left out)."""
    kernel = srv.kernel(gateway)
    return {f"{k} : {v}" for k, v in kernel.elements(f"labgate_{gateway}", "targets").items()
            if not k.startswith("0.0.0.0")}


def test_routers_become_gateways_and_forwards_follow_their_port(neutron, tmp_path) -> None:
    a, b = neutron.project_topology(cidr=CIDR, name="a"), neutron.project_topology(cidr=CIDR, name="b")
    vm_a, vm_b = str(uuid.uuid4()), str(uuid.uuid4())
    port_a = neutron.vm_port(a, "10.40.0.5", device_id=vm_a)
    port_b = neutron.vm_port(b, "10.40.0.5", device_id=vm_b)  # the same address behind another router
    gw_a, gw_b = router_gateway_name(a.router.id), router_gateway_name(b.router.id)
    ext_a = a.router.external_gateway_info["external_fixed_ips"][0]["ip_address"]
    with labgate(neutron, tmp_path, [a.project_id, b.project_id]) as srv, admin(srv) as api:
        gateways = {g["name"]: g for g in api.get("/api/v1/gateways").json()}
        assert set(gateways) == {gw_a, gw_b}
        assert gateways[gw_a] | {"router_id": a.router.id, "router_name": "a-router", "project_id": a.project_id,
                                 "netns": f"qrouter-{a.router.id}", "external_address": ext_a,
                                 "target_networks": [CIDR], "masquerade": False} == gateways[gw_a]

        # By port id: no gateway needed, the router is found from the port's subnet.
        made = api.post("/api/v1/forwards", json={"target_port_id": port_a.id, "target_port": 22})
        assert made.status_code == 201, made.text
        fwd_a = made.json()
        assert (fwd_a["gateway"], fwd_a["target_address"], fwd_a["target_port_id"]) == (gw_a, "10.40.0.5", port_a.id)
        assert fwd_a["target_server"] == {"id": vm_a, "name": None}
        # By address on router B (named by its router's name): bound to B's port, never A's.
        made = api.post("/api/v1/forwards", json={"target_address": "10.40.0.5", "target_port": 22,
                                                  "gateway": b.router.id})
        assert made.status_code == 201, made.text
        fwd_b = made.json()
        assert (fwd_b["gateway"], fwd_b["target_port_id"]) == (gw_b, port_b.id)
        assert kernel_targets(srv, gw_a) == {f"{ext_a} . tcp . {fwd_a['external_port']} : 10.40.0.5 . 22"}
        # Listing by a router's id or name is listing by its gateway.
        for key in (a.router.id, "a-router", gw_a):
            listed = api.get("/api/v1/forwards", params={"gateway": key}).json()["results"]
            assert [f["id"] for f in listed] == [fwd_a["id"]], key

        # The port's fixed IP changes in Neutron: the next cycle retargets the forward (and only that one).
        with neutron.project(a.project_id) as conn:
            conn.network.update_port(port_a.id, fixed_ips=[{"subnet_id": a.subnet.id, "ip_address": "10.40.0.9"}])
        report = cycle(srv)
        assert report.changes == {"forward_retargeted": 1} and report.api_calls == 3
        got = api.get(f"/api/v1/forwards/{fwd_a['id']}").json()
        assert got["target_address"] == "10.40.0.9" and got["status"] == "active"
        assert kernel_targets(srv, gw_a) == {f"{ext_a} . tcp . {fwd_a['external_port']} : 10.40.0.9 . 22"}
        assert api.get(f"/api/v1/forwards/{fwd_b['id']}").json()["target_address"] == "10.40.0.5"
        assert cycle(srv).changes == {}  # nothing changed: nothing done

        # The VM is deleted (Nova deletes its port): its forward goes, its port is free again.
        neutron.delete_vm(a.project_id, vm_a)
        assert cycle(srv).changes == {"forward_deleted": 1}
        assert api.get(f"/api/v1/forwards/{fwd_a['id']}").status_code == 404
        assert kernel_targets(srv, gw_a) == set()
        audit = api.get("/api/v1/audit", params={"object_id": fwd_a["id"], "action": "forward.delete"}).json()
        assert [e["actor"] for e in audit["results"]] == ["openstack"]

        status = api.get("/api/v1/openstack").json()
        assert status["configured"] and status["last_cycle"]["error"] is None
        # The three listings, and a lookup by id that confirms the deleted port is gone (only when one is).
        assert status["last_cycle"]["api_calls"] == 4
        assert cycle(srv).api_calls == 3


def test_orphan_policy_and_a_deleted_router(neutron, tmp_path) -> None:
    a = neutron.project_topology(cidr="10.41.0.0/24", name="orph")
    vm, kept = str(uuid.uuid4()), str(uuid.uuid4())
    port = neutron.vm_port(a, "10.41.0.5", device_id=vm)
    port_kept = neutron.vm_port(a, "10.41.0.6", device_id=kept)
    gw = router_gateway_name(a.router.id)
    with labgate(neutron, tmp_path, [a.project_id], on_target_deleted="orphan") as srv, admin(srv) as api:
        one = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 22}).json()
        # A server by name needs Nova, which this cloud has not: the request is refused, saying to give the id.
        named = api.post("/api/v1/forwards", json={"target_server": "web-1", "target_port": 80})
        assert named.status_code == 422 and named.json()["error"]["field"] == "target_server"
        assert "give the server's id" in named.json()["error"]["message"]
        two = api.post("/api/v1/forwards", json={"target_server": kept, "target_port": 80}).json()
        assert two["target_port_id"] == port_kept.id and two["target_address"] == "10.41.0.6"
        # The user's own port survives its VM, detached (device_id cleared): orphaned, rules gone, port kept.
        neutron.delete_vm(a.project_id, vm, keep=(port.id,))
        assert cycle(srv).changes == {"forward_orphaned": 1}
        got = api.get(f"/api/v1/forwards/{one['id']}").json()
        assert got["status"] == "orphaned" and "device_id cleared" in got["orphaned_reason"]
        assert all(f": 10.41.0.5 " not in e for e in kernel_targets(srv, gw))
        patched = api.patch(f"/api/v1/forwards/{one['id']}", json={"enabled": False})
        assert patched.status_code == 422 and "orphaned" in patched.json()["error"]["message"]

        # The router is deleted: its forwards are orphaned, their ports still held, the gateway gone.
        with neutron.project(a.project_id) as conn:
            conn.network.remove_interface_from_router(a.router.id, subnet_id=a.subnet.id)
            conn.network.delete_router(a.router.id)
        report = cycle(srv)
        assert report.changes == {"router_removed": 1, "forward_orphaned": 1}
        assert [g["name"] for g in api.get("/api/v1/gateways").json()] == []
        got = api.get(f"/api/v1/forwards/{two['id']}").json()
        assert got["status"] == "orphaned" and got["orphaned_reason"] == "router deleted"
        # An admin deletes them.
        assert api.delete(f"/api/v1/forwards/{two['id']}").status_code == 204
        assert api.delete(f"/api/v1/forwards/{one['id']}").status_code == 204


def test_project_tokens_see_and_target_only_their_project(neutron, tmp_path) -> None:
    a, b = neutron.project_topology(cidr="10.42.0.0/24", name="pa"), neutron.project_topology(cidr="10.42.0.0/24",
                                                                                                name="pb")
    port_a, port_b = neutron.vm_port(a, "10.42.0.5"), neutron.vm_port(b, "10.42.0.5")
    with labgate(neutron, tmp_path, [a.project_id, b.project_id]) as srv, admin(srv) as api:
        fwd_b = api.post("/api/v1/forwards", json={"target_port_id": port_b.id, "target_port": 22}).json()
        tenant = srv.client(create_token(srv.labgate.db, "alice", project=a.project_id))
        mine = tenant.post("/api/v1/forwards", json={"target_port_id": port_a.id, "target_port": 22})
        assert mine.status_code == 201, mine.text
        refused = tenant.post("/api/v1/forwards", json={"target_port_id": port_b.id, "target_port": 22})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "target_port_id"
        refused = tenant.post("/api/v1/forwards", json={"target_address": "10.42.0.5", "target_port": 22,
                                                        "gateway": b.router.id})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "gateway"
        listed = tenant.get("/api/v1/forwards").json()
        assert [f["id"] for f in listed["results"]] == [mine.json()["id"]]
        assert tenant.get(f"/api/v1/forwards/{fwd_b['id']}").status_code == 404
        assert tenant.delete(f"/api/v1/forwards/{fwd_b['id']}").status_code == 404
        assert [g["router_id"] for g in tenant.get("/api/v1/gateways").json()] == [a.router.id]
        tenant.close()


@pytest.mark.parametrize("count", [10, 1000])
def test_api_calls_per_cycle_do_not_grow_with_forwards(neutron, tmp_path, count) -> None:
    a = neutron.project_topology(cidr="10.43.0.0/22", name=f"scale{count}")
    ports = [neutron.vm_port(a) for _ in range(5)]
    with labgate(neutron, tmp_path, [a.project_id], router_port_range="10000-12000") as srv:
        from labgate.core.forwards import ForwardSpec
        from labgate.core.tokens import Principal

        root = Principal("root", role="admin")
        for i in range(count):
            srv.labgate.forwards.create(root, ForwardSpec(target_address=None, target_port_id=ports[i % 5].id,
                                                          target_port=1000 + i))
        report = cycle(srv)
        assert report.changes == {} and report.api_calls == 3


def test_router_changes_a_failed_look_and_events(neutron, tmp_path) -> None:
    a = neutron.project_topology(cidr="10.44.0.0/24", name="chg")
    port = neutron.vm_port(a, "10.44.0.5")
    gw = router_gateway_name(a.router.id)
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        fwd = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 22}).json()
        # A second interface: the router's target networks grow within one cycle.
        with neutron.project(a.project_id) as conn:
            net = conn.network.create_network(name="chg-2")
            subnet = conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.45.0.0/24")
            conn.network.add_interface_to_router(a.router.id, subnet=subnet.id)
        assert cycle(srv).changes == {"router_changed": 1}
        [got] = api.get("/api/v1/gateways").json()
        assert got["target_networks"] == ["10.44.0.0/24", "10.45.0.0/24"]
        # The router's external address changes: the gateway's, and its rules', follow.
        # (An address no other test's router holds: Neutron hands them out at random from the session's pool.)
        ext = neutron.external_network()
        held = {ip["ip_address"] for p in neutron.admin().network.ports(network_id=ext.network.id)
                for ip in p.fixed_ips}
        new_ext = next(f"198.51.100.{i}" for i in range(250, 9, -1) if f"198.51.100.{i}" not in held)
        neutron.admin().network.update_router(a.router.id, external_gateway_info={
            "network_id": ext.network.id, "external_fixed_ips": [{"subnet_id": ext.subnet.id,
                                                                  "ip_address": new_ext}]})
        assert cycle(srv).changes == {"router_changed": 1}
        [got] = api.get("/api/v1/gateways").json()
        assert got["external_address"] == new_ext
        assert api.get(f"/api/v1/forwards/{fwd['id']}").json()["external_address"] == new_ext
        srv.labgate.dataplane.reconcile_once()
        assert {k.split(" . ")[0] for k in srv.kernel(gw).elements(f"labgate_{gw}", "targets")} >= {new_ext}

        # The cloud cannot be read: the cycle fails, nothing is touched, the status says why; then it recovers.
        monitor = srv.labgate.openstack
        good = monitor.cloud
        gone = tmp_path / "clouds.yaml"
        gone.write_text("clouds:\n  gone:\n    auth_type: none\n    network_endpoint_override: http://127.0.0.1:9/\n")
        from labgate.openstack.cloud import Cloud

        monitor.cloud = Cloud(OpenStackConfig(cloud="gone", clouds_file=str(gone), api_timeout=2))
        neutron.delete_vm(a.project_id, port.device_id)  # a change the failed cycle must not apply
        failed = monitor.cycle()
        assert failed.error and failed.changes == {}
        status = api.get("/api/v1/openstack").json()
        assert status["consecutive_failures"] == 1 and status["last_cycle"]["error"] == failed.error
        assert status["last_successful_cycle"]["error"] is None
        assert api.get(f"/api/v1/forwards/{fwd['id']}").json()["status"] == "active"
        assert [g["name"] for g in api.get("/api/v1/gateways").json()] == [gw]
        monitor.cloud = good
        assert cycle(srv).changes == {"forward_deleted": 1}
        assert api.get("/api/v1/openstack").json()["consecutive_failures"] == 0

        events = api.get("/api/v1/events", params={"forward_id": fwd["id"]}).json()["results"]
        deleted = [e["fields"] for e in events if e["kind"] == "forward" and e["fields"]["action"] == "deleted"]
        assert deleted and deleted[0]["reason"] == "target port deleted"
        routers = [e["fields"]["action"] for e in api.get("/api/v1/events", params={"kind": "openstack"}).json()[
            "results"] if e["fields"].get("router_id") == a.router.id]
        assert routers == ["router_added", "router_changed", "router_changed"]
