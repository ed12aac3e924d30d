"""What the monitor must not do on a look it cannot trust, and what it undoes when the cloud comes back, against the
real Neutron: a listing cut short deletes nothing; a look that loses every router is held for a second one; a router
that comes back brings its forwards back; ports of another project on a router's shared network are neither lost
nor bound; a router going while a create runs never leaves a live forward behind."""

from __future__ import annotations

import time
import uuid

from labgate.config import router_gateway_name
from labgate.core import cloud as core_cloud
from labgate.core.tokens import create_token
from labgate.openstack.topology import Snapshot
from tests.openstack.test_monitor import admin, cycle, kernel_targets, labgate


def test_a_listing_that_leaves_out_a_live_port_deletes_nothing(neutron, tmp_path) -> None:
    a = neutron.project_topology(cidr="10.60.0.0/24", name="short")
    vm = str(uuid.uuid4())
    port = neutron.vm_port(a, "10.60.0.5", device_id=vm)
    gw = router_gateway_name(a.router.id)
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        fwd = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 22}).json()
        monitor = srv.labgate.openstack
        real = monitor.cloud.snapshot

        def cut_short() -> Snapshot:  # a page lost: the port is missing from the listing, not from the cloud
            snap = real()
            snap.ports.pop(port.id)
            return snap

        monitor.cloud.snapshot = cut_short
        try:
            report = monitor.cycle()
        finally:
            monitor.cloud.snapshot = real
        assert report.error is not None and "left out 1 port" in report.error and report.changes == {}
        got = api.get(f"/api/v1/forwards/{fwd['id']}").json()
        assert got["status"] == "active"
        assert len(kernel_targets(srv, gw)) == 1
        assert report.api_calls == 4  # three listings and one lookup of the missing port by id

        # Really deleted: the lookup agrees, the forward goes in that cycle.
        neutron.delete_vm(a.project_id, vm)
        assert cycle(srv).changes == {"forward_deleted": 1}
        assert kernel_targets(srv, gw) == set()


def test_a_look_that_loses_every_router_is_held_then_undone_when_they_return(neutron, tmp_path) -> None:
    a = neutron.project_topology(cidr="10.61.0.0/24", name="held")
    neutron.project_topology(a.project_id, cidr="10.61.1.0/24", name="held-2")
    port = neutron.vm_port(a, "10.61.0.5")
    gw = router_gateway_name(a.router.id)
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        fwd = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 22}).json()
        before = kernel_targets(srv, gw)
        monitor = srv.labgate.openstack
        wanted = monitor.cloud.cfg.projects
        monitor.cloud.cfg = monitor.cloud.cfg.model_copy(update={"projects": [uuid.uuid4().hex]})  # a wrong filter
        try:
            held = monitor.cycle()
            assert held.error is not None and "none of the 2 routers" in held.error and held.changes == {}
            assert api.get(f"/api/v1/forwards/{fwd['id']}").json()["status"] == "active"
            assert kernel_targets(srv, gw) == before
            # A second look agrees: the router is gone, its forward orphaned (its port kept).
            assert cycle(srv).changes == {"router_removed": 2, "forward_orphaned": 1}
            assert api.get(f"/api/v1/forwards/{fwd['id']}").json()["status"] == "orphaned"
        finally:
            monitor.cloud.cfg = monitor.cloud.cfg.model_copy(update={"projects": wanted})
        # The router is listed again: served again, and the forward its loss orphaned is live again, same port.
        assert cycle(srv).changes == {"router_added": 2, "forward_restored": 1}
        got = api.get(f"/api/v1/forwards/{fwd['id']}").json()
        assert got["status"] == "active" and got["external_port"] == fwd["external_port"]
        srv.labgate.dataplane.reconcile_once()
        assert kernel_targets(srv, gw) == before
        trail = api.get("/api/v1/audit", params={"object_id": fwd["id"], "action": "forward.restore"}).json()
        assert [e["actor"] for e in trail["results"]] == ["openstack"]


def test_a_router_that_gets_its_external_gateway_back_gets_its_forwards_back(neutron, tmp_path) -> None:
    a = neutron.project_topology(cidr="10.62.0.0/24", name="unplug")
    other = neutron.project_topology(a.project_id, cidr="10.62.1.0/24", name="stays")
    vm = str(uuid.uuid4())
    port = neutron.vm_port(a, "10.62.0.5", device_id=vm)
    gw = router_gateway_name(a.router.id)
    ext = neutron.external_network()
    with labgate(neutron, tmp_path, [a.project_id], on_target_deleted="orphan") as srv, admin(srv) as api:
        old_ssh = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 22}).json()
        old_web = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 80}).json()
        neutron.delete_vm(a.project_id, vm, keep=(port.id,))  # its own port's loss: stays orphaned
        assert cycle(srv).changes == {"forward_orphaned": 2}
        with neutron.nova(a.project_id) as conn:
            conn.network.update_port(port.id, device_id=str(uuid.uuid4()), device_owner="compute:nova")
        # (The two are orphaned for the port; a new forward is orphaned for the router below.)
        fresh = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 443}).json()
        with neutron.project(a.project_id) as conn:
            conn.network.update_router(a.router.id, external_gateway_info={})
        report = cycle(srv)
        assert report.changes == {"router_removed": 1, "forward_orphaned": 1}
        assert api.get(f"/api/v1/forwards/{fresh['id']}").json()["orphaned_reason"] == "router lost its external gateway"
        with neutron.project(a.project_id) as conn:
            conn.network.update_router(a.router.id, external_gateway_info={"network_id": ext.network.id})
        assert cycle(srv).changes == {"router_added": 1, "forward_restored": 1}
        states = {f["id"]: f["status"] for f in api.get("/api/v1/forwards", params={"gateway": gw}).json()["results"]}
        assert states == {old_ssh["id"]: "orphaned", old_web["id"]: "orphaned", fresh["id"]: "active"}
        assert other.router.id != a.router.id  # the other router of the project was never touched
        assert [g["router_id"] for g in api.get("/api/v1/gateways").json()].count(other.router.id) == 1


def test_another_projects_vm_on_a_shared_network_is_neither_lost_nor_bound(neutron, tmp_path) -> None:
    a = neutron.project_topology(cidr="10.63.0.0/24", name="shared")
    b_project = neutron.new_project_id()
    theirs = neutron.admin().network.create_port(
        network_id=a.network.id, project_id=b_project, device_owner="compute:nova", device_id=str(uuid.uuid4()),
        fixed_ips=[{"subnet_id": a.subnet.id, "ip_address": "10.63.0.66"}])
    mine = neutron.vm_port(a, "10.63.0.5")
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        # An admin's forward to project B's VM on A's network, by port: B is outside `projects`, its port is not.
        by_port = api.post("/api/v1/forwards", json={"target_port_id": theirs.id, "target_port": 22})
        assert by_port.status_code == 201, by_port.text
        # By address, made while labgate's view had no port there (an address typed by hand), and one to A's VM.
        by_address = api.post("/api/v1/forwards", json={"target_address": "10.63.0.66", "target_port": 80,
                                                        "gateway": a.router.id}).json()
        own = api.post("/api/v1/forwards", json={"target_address": "10.63.0.5", "target_port": 80,
                                                 "gateway": a.router.id}).json()
        assert own["target_port_id"] == mine.id
        # Unbind both, as a forward typed before its VM booted would be; the monitor binds only A's.
        from sqlalchemy import update

        from labgate.db.models import Forward

        with srv.labgate.db.writer() as s:
            s.execute(update(Forward).where(Forward.id.in_([by_address["id"], own["id"]]))
                      .values(target_port_id=None, target_server_id=None))
            s.commit()
        assert cycle(srv).changes == {"forward_bound": 1}
        got = {f["id"]: f for f in api.get("/api/v1/forwards").json()["results"]}
        assert got[own["id"]]["target_port_id"] == mine.id
        assert got[by_address["id"]]["target_port_id"] is None
        assert got[by_port.json()["id"]]["status"] == "active"  # not taken for deleted: B's ports are listed
        assert cycle(srv).changes == {}


def test_a_router_that_goes_while_a_create_runs_leaves_no_live_forward(neutron, tmp_path) -> None:
    a = neutron.project_topology(cidr="10.64.0.0/24", name="race2")
    port = neutron.vm_port(a, "10.64.0.5")
    gw = router_gateway_name(a.router.id)
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        forwards = srv.labgate.forwards
        real = forwards._pool
        done: list[int] = []

        def router_goes(*args, **kw):
            # The monitor orphans the router's forwards after this create found the gateway, before it writes.
            if not done:
                done.append(core_cloud.router_gone(forwards, gw, core_cloud.ROUTER_DELETED))
            return real(*args, **kw)

        forwards._pool = router_goes
        try:
            r = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 22})
        finally:
            forwards._pool = real
        assert done == [0]
        assert r.status_code == 503 and "removed" in r.json()["error"]["message"], r.text
        assert api.get("/api/v1/forwards").json()["count"] == 0
        # Retiring, not yet removed: no one finds it any more.
        again = api.post("/api/v1/forwards", json={"target_address": "10.64.0.5", "target_port": 22,
                                                   "gateway": a.router.id})
        assert again.status_code == 422 and again.json()["error"]["field"] == "gateway"
        assert kernel_targets(srv, gw) == set()


def test_a_port_behind_no_router_costs_one_call_not_a_look(neutron, tmp_path) -> None:
    a = neutron.project_topology(cidr="10.65.0.0/24", name="lone")
    with neutron.project(a.project_id) as conn:  # a network no router is attached to
        net = conn.network.create_network(name="lone-2")
        subnet = conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.65.1.0/24")
    with neutron.nova(a.project_id) as conn:
        port = conn.network.create_port(network_id=net.id, device_id=str(uuid.uuid4()),
                                        device_owner="compute:nova", fixed_ips=[{"subnet_id": subnet.id}])
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        cloud = srv.labgate.openstack.cloud
        # The monitor's own first cycle starts when this process wins the singleton election (at once on SQLite,
        # at the election's first round on PostgreSQL): counted before, never inside, the window below.
        deadline = time.monotonic() + 30
        while srv.labgate.openstack._loop.runs < 1:
            assert time.monotonic() < deadline, "the monitor's first cycle did not run"
            time.sleep(0.05)
        before = cloud.calls
        for _ in range(3):
            r = api.post("/api/v1/forwards", json={"target_port_id": port.id, "target_port": 22})
            assert r.status_code == 422 and r.json()["error"]["field"] == "target_port_id", r.text
        assert cloud.calls - before == 3 * 2  # per request: the port, and whether a router serves its subnet


def test_a_project_token_sees_the_monitor_but_not_the_cloud_s_words(neutron, tmp_path) -> None:
    a = neutron.project_topology(cidr="10.66.0.0/24", name="words")
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        monitor = srv.labgate.openstack
        real = monitor.cloud.snapshot

        def failing():
            from labgate.openstack.cloud import CloudError

            raise CloudError("network /routers answered 500: 'secret endpoint http://10.9.9.9:9696 project b'")

        monitor.cloud.snapshot = failing
        try:
            monitor.cycle()
        finally:
            monitor.cloud.snapshot = real
        tenant = srv.client(create_token(srv.labgate.db, "alice", project=a.project_id))
        seen = tenant.get("/api/v1/openstack").json()
        assert seen["last_cycle"]["error"] and "10.9.9.9" not in seen["last_cycle"]["error"]
        assert seen["projects"] == [a.project_id]
        full = api.get("/api/v1/openstack").json()
        assert "10.9.9.9" in full["last_cycle"]["error"]
        tenant.close()


def test_a_server_name_nova_cannot_answer_now_is_a_503_not_a_fix_your_request(neutron, tmp_path) -> None:
    a = neutron.project_topology(cidr="10.67.0.0/24", name="nova")
    with labgate(neutron, tmp_path, [a.project_id]) as srv, admin(srv) as api:
        # No compute service in the catalog: the request's to fix (give the id), 422.
        r = api.post("/api/v1/forwards", json={"target_server": "web-1", "target_port": 22})
        assert r.status_code == 422 and "give the server's id" in r.json()["error"]["message"], r.text
    clouds = tmp_path / "clouds-nova.yaml"
    clouds.write_text(neutron.clouds_yaml.read_text() + "    compute_endpoint_override: http://127.0.0.1:9/\n")
    neutron_down = type("N", (), {"cloud": neutron.cloud, "clouds_yaml": clouds})
    (tmp_path / "2").mkdir()
    with labgate(neutron_down, tmp_path / "2", [a.project_id], api_timeout=5) as srv, admin(srv) as api:
        # Nova is there but does not answer: the cloud's to fix, 503 (try again), not 422.
        r = api.post("/api/v1/forwards", json={"target_server": "web-1", "target_port": 22})
        assert r.status_code == 503 and "Nova does not answer" in r.json()["error"]["message"], r.text
