"""The monitor's diff at its edges, against the real Neutron: forwards made while a look is in flight, ports that no
VM holds (a VIP, a port made before its VM), a router removed while a request uses it."""

from __future__ import annotations

import uuid

from labgate.config import router_gateway_name
from tests.openstack.test_monitor import admin, cycle, kernel_targets, labgate


def test_a_forward_made_while_the_cloud_is_read_is_not_judged_by_that_older_look(neutron, tmp_path) -> None:
    a = neutron.project_topology(cidr="10.46.0.0/24", name="race")
    moved = neutron.vm_port(a, "10.46.0.5")
    gw = router_gateway_name(a.router.id)
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        monitor = srv.labgate.openstack
        real = monitor.cloud.snapshot
        made: dict[str, dict] = {}

        def look():
            snap = real()
            # After the listings, before the cycle applies them: a VM boots and gets a forward; another VM's address
            # changes and a forward is made to it (each read fresh from Neutron by the create).
            booted = neutron.vm_port(a, "10.46.0.7")
            with neutron.project(a.project_id) as conn:
                conn.network.update_port(moved.id, fixed_ips=[{"subnet_id": a.subnet.id,
                                                               "ip_address": "10.46.0.9"}])
            for port in (booted, moved):
                r = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 22})
                assert r.status_code == 201, r.text
                made[port.id] = r.json()
            return snap

        monitor.cloud.snapshot = look
        try:
            report = cycle(srv)
        finally:
            monitor.cloud.snapshot = real
        assert report.changes == {}, "a look older than the forward deleted or retargeted it"
        got = {p: api.get(f"/api/v1/forwards/{f['id']}").json() for p, f in made.items()}
        assert {g["target_address"] for g in got.values()} == {"10.46.0.7", "10.46.0.9"}
        assert all(g["status"] == "active" for g in got.values())
        assert len(kernel_targets(srv, gw)) == 2
        assert cycle(srv).changes == {}  # the next look agrees


def test_a_port_no_vm_holds_is_followed_not_deleted(neutron, tmp_path) -> None:
    a = neutron.project_topology(cidr="10.47.0.0/24", name="vip")
    with neutron.project(a.project_id) as conn:  # a VIP (or a port made before its VM): no device_id
        vip = conn.network.create_port(network_id=a.network.id, name="vip",
                                       fixed_ips=[{"subnet_id": a.subnet.id, "ip_address": "10.47.0.50"}])
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        by_address = api.post("/api/v1/forwards", json={"target_address": "10.47.0.50", "target_port": 443,
                                                        "gateway": a.router.id}).json()
        by_port = api.post("/api/v1/forwards", json={"target_port_id": vip.id, "target_port": 22}).json()
        assert by_address["target_port_id"] == by_port["target_port_id"] == vip.id
        assert cycle(srv).changes == {}, "a port that never had a VM is not a deleted VM's"
        for fwd in (by_address, by_port):
            assert api.get(f"/api/v1/forwards/{fwd['id']}").json()["status"] == "active"

        # A VM takes the port; then the VM is deleted (device_id cleared): now its forwards go.
        vm = str(uuid.uuid4())
        with neutron.nova(a.project_id) as conn:
            conn.network.update_port(vip.id, device_id=vm, device_owner="compute:nova")
        assert cycle(srv).changes == {"forward_bound": 2}
        neutron.delete_vm(a.project_id, vm, keep=(vip.id,))
        assert cycle(srv).changes == {"forward_deleted": 2}


def test_a_router_removed_while_a_create_runs_is_a_clear_answer(neutron, tmp_path) -> None:
    a = neutron.project_topology(cidr="10.48.0.0/24", name="gone")
    port = neutron.vm_port(a, "10.48.0.5")
    gw = router_gateway_name(a.router.id)
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        forwards = srv.labgate.forwards
        real = forwards._check_ports_free

        def router_goes(*args, **kw):
            # The monitor finds the router gone after this create found its gateway, before it commits.
            real(*args, **kw)
            srv.labgate.dataplane.remove_gateway(gw)

        forwards._check_ports_free = router_goes
        try:
            r = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 22})
        finally:
            forwards._check_ports_free = real
        assert r.status_code in (409, 422, 503), r.text
        assert api.get("/api/v1/forwards").json()["count"] == 0


def test_a_create_that_needs_a_new_look_the_cloud_refuses_is_a_503(neutron, tmp_path) -> None:
    """A port on a subnet the last look did not know makes the create look again; when that look fails, the answer is
    "the cloud cannot be read" (503, try again), not "this port is behind no router" (422, fix your request)."""
    from labgate.openstack.cloud import CloudError

    a = neutron.project_topology(cidr="10.49.0.0/24", name="late")
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        with neutron.project(a.project_id) as conn:  # a subnet attached after the last look, a VM on it
            net = conn.network.create_network(name="late-2")
            subnet = conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.49.1.0/24")
            conn.network.add_interface_to_router(a.router.id, subnet=subnet.id)
        with neutron.nova(a.project_id) as conn:
            port = conn.network.create_port(network_id=net.id, device_id=str(uuid.uuid4()),
                                            device_owner="compute:nova", fixed_ips=[{"subnet_id": subnet.id}])
        monitor = srv.labgate.openstack
        real = monitor.cloud.snapshot

        def unreachable():
            raise CloudError("network /routers: ConnectFailure: the cloud is down")

        monitor.cloud.snapshot = unreachable
        try:
            r = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 22})
        finally:
            monitor.cloud.snapshot = real
        assert r.status_code == 503, r.text
        assert "cloud" in r.json()["error"]["message"]
        assert api.get("/api/v1/forwards").json()["count"] == 0
        # The cloud answers again: the same create works.
        r = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 22})
        assert r.status_code == 201, r.text


def test_a_restart_after_the_router_went_away(neutron, tmp_path) -> None:
    """labgate is down while a router is deleted: on restart it serves the router it remembers (rules back before the
    cloud answers), and the first look orphans its forwards; an admin deletes them."""
    a = neutron.project_topology(cidr="10.54.0.0/24", name="restart")
    port = neutron.vm_port(a, "10.54.0.5")
    gw = router_gateway_name(a.router.id)
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        fwd = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 22}).json()
    with neutron.project(a.project_id) as conn:
        conn.network.remove_interface_from_router(a.router.id, subnet_id=a.subnet.id)
        conn.network.delete_router(a.router.id)
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        assert gw not in srv.labgate.dataplane.gateways
        got = api.get(f"/api/v1/forwards/{fwd['id']}").json()
        assert (got["status"], got["orphaned_reason"]) == ("orphaned", "router deleted")
        assert cycle(srv).changes == {}
        assert api.delete(f"/api/v1/forwards/{fwd['id']}").status_code == 204


def test_a_router_that_loses_its_external_gateway_then_gets_it_back(neutron, tmp_path) -> None:
    """The namespace stays (the router does): labgate's table leaves it, the forwards are orphaned; the gateway set
    again serves the router again, and the forwards its loss orphaned are live again on their old ports."""
    a = neutron.project_topology(cidr="10.55.0.0/24", name="gwless")
    port = neutron.vm_port(a, "10.55.0.5")
    gw = router_gateway_name(a.router.id)
    ext = neutron.external_network()
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        fwd = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 22}).json()
        kernel = srv.kernel(gw)
        assert f"labgate_{gw}" in kernel.tables
        neutron.admin().network.update_router(a.router.id, external_gateway_info={})
        assert cycle(srv).changes == {"router_removed": 1, "forward_orphaned": 1}
        assert f"labgate_{gw}" not in kernel.tables and gw not in srv.labgate.dataplane.gateways
        got = api.get(f"/api/v1/forwards/{fwd['id']}").json()
        assert (got["status"], got["orphaned_reason"]) == ("orphaned", "router lost its external gateway")

        neutron.admin().network.update_router(a.router.id, external_gateway_info={"network_id": ext.network.id})
        assert cycle(srv).changes == {"router_added": 1, "forward_restored": 1}
        srv.labgate.dataplane.reconcile_once()
        got = api.get(f"/api/v1/forwards/{fwd['id']}").json()
        assert got["status"] == "active" and got["orphaned_reason"] is None
        assert kernel_targets(srv, gw) == {f"{got['external_address']} . tcp . {fwd['external_port']} : 10.55.0.5 . 22"}


def test_a_router_that_loses_the_interface_to_a_vm_orphans_its_forwards(neutron, tmp_path) -> None:
    """The VM and its port are still there, only no longer behind the router (an interface removed, perhaps for a
    while): like a router that goes, its forwards are orphaned - never deleted, whatever on_target_deleted says."""
    a = neutron.project_topology(cidr="10.56.0.0/24", name="ifgone")
    port = neutron.vm_port(a, "10.56.0.5")
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        fwd = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 22}).json()
        with neutron.project(a.project_id) as conn:
            conn.network.remove_interface_from_router(a.router.id, subnet_id=a.subnet.id)
        assert cycle(srv).changes == {"router_changed": 1, "forward_orphaned": 1}
        got = api.get(f"/api/v1/forwards/{fwd['id']}").json()
        assert got["status"] == "orphaned" and "no longer on a network behind" in got["orphaned_reason"]
