"""Project-scoped tokens through every endpoint that shows or changes forwards, against the real Neutron: a token of
project A neither sees project B's forwards (however its owner is named) nor targets B's ports (however it asks)."""

from __future__ import annotations

import uuid

from labgate.config import router_gateway_name
from labgate.core.tokens import create_token
from tests.openstack.test_monitor import admin, labgate


def test_machines_and_events_of_a_project_token_stay_in_its_project(neutron, tmp_path) -> None:
    a, b = neutron.project_topology(cidr="10.50.0.0/24", name="ma"), neutron.project_topology(cidr="10.50.0.0/24",
                                                                                                name="mb")
    port_a, port_b = neutron.vm_port(a, "10.50.0.5"), neutron.vm_port(b, "10.50.0.5")
    with labgate(neutron, tmp_path, [a.project_id, b.project_id]) as srv:
        # One person, one token per project (the owner is just a name: the same in both).
        alice_b = srv.client(create_token(srv.labgate.db, "alice", project=b.project_id))
        alice_a = srv.client(create_token(srv.labgate.db, "alice", project=a.project_id))
        fwd_b = alice_b.post("/api/v1/forwards", json={"target_port_id": port_b.id, "target_port": 22,
                                                       "name": "secret-b"})
        fwd_a = alice_a.post("/api/v1/forwards", json={"target_port_id": port_a.id, "target_port": 22,
                                                       "name": "web-a"})
        same_name = alice_b.post("/api/v1/forwards", json={"target_port_id": port_b.id, "target_port": 80,
                                                           "name": "web-a"})
        assert fwd_a.status_code == fwd_b.status_code == same_name.status_code == 201
        assert [f["id"] for f in alice_a.get("/api/v1/forwards").json()["results"]] == [fwd_a.json()["id"]]
        machines = alice_a.get("/api/v1/machines").json()
        assert [m["name"] for m in machines["results"]] == ["web-a"]
        assert [f["id"] for f in machines["results"][0]["forwards"]] == [fwd_a.json()["id"]]
        events = alice_a.get("/api/v1/events", params={"kind": "forward"}).json()["results"]
        assert {e["fields"]["forward_id"] for e in events} == {fwd_a.json()["id"]}
        assert alice_a.get("/api/v1/events", params={"forward_id": fwd_b.json()["id"]}).json()["results"] == []
        alice_a.close()
        alice_b.close()


def test_a_project_token_cannot_retarget_to_another_projects_port(neutron, tmp_path) -> None:
    a, b = neutron.project_topology(cidr="10.51.0.0/24", name="ra"), neutron.project_topology(cidr="10.52.0.0/24",
                                                                                                name="rb")
    port_a, other_a = neutron.vm_port(a, "10.51.0.5"), neutron.vm_port(a, "10.51.0.6")
    # A port of project B on project A's network (an admin's doing, or a network A shares).
    theirs = neutron.admin().network.create_port(
        network_id=a.network.id, project_id=b.project_id, device_owner="compute:nova", device_id=str(uuid.uuid4()),
        fixed_ips=[{"subnet_id": a.subnet.id, "ip_address": "10.51.0.66"}])
    with labgate(neutron, tmp_path, [a.project_id, b.project_id]) as srv:
        tenant = srv.client(create_token(srv.labgate.db, "alice", project=a.project_id))
        mine = tenant.post("/api/v1/forwards", json={"target_port_id": port_a.id, "target_port": 22}).json()
        refused = tenant.post("/api/v1/forwards", json={"target_address": "10.51.0.66", "target_port": 22,
                                                        "gateway": a.router.id})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "target_address"
        # What a create refuses, a change refuses too.
        refused = tenant.patch(f"/api/v1/forwards/{mine['id']}", json={"target_address": "10.51.0.66"})
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["field"] == "target_address"
        got = tenant.get(f"/api/v1/forwards/{mine['id']}").json()
        assert (got["target_address"], got["target_port_id"]) == ("10.51.0.5", port_a.id)
        # To an address of its own project's port: bound to that port at once.
        moved = tenant.patch(f"/api/v1/forwards/{mine['id']}", json={"target_address": "10.51.0.6"})
        assert moved.status_code == 200, moved.text
        assert (moved.json()["target_address"], moved.json()["target_port_id"]) == ("10.51.0.6", other_a.id)
        assert theirs.id not in {f["target_port_id"] for f in tenant.get("/api/v1/forwards").json()["results"]}
        tenant.close()


def test_routers_of_two_projects_with_one_name(neutron, tmp_path) -> None:
    """Clouds name routers alike ("router1"): a project token names its own router by name; an admin, for whom the
    name is ambiguous, is told to use the id."""
    a, b = neutron.project_topology(cidr="10.53.0.0/24", name="twin"), neutron.project_topology(cidr="10.53.0.0/24",
                                                                                                  name="twin")
    neutron.vm_port(a, "10.53.0.5")
    with labgate(neutron, tmp_path, [a.project_id, b.project_id]) as srv, admin(srv) as api:
        tenant = srv.client(create_token(srv.labgate.db, "alice", project=a.project_id))
        made = tenant.post("/api/v1/forwards", json={"target_address": "10.53.0.5", "target_port": 22,
                                                     "gateway": "twin-router"})
        assert made.status_code == 201, made.text
        assert made.json()["gateway"] == router_gateway_name(a.router.id)
        listed = tenant.get("/api/v1/forwards", params={"gateway": "twin-router"}).json()["results"]
        assert [f["id"] for f in listed] == [made.json()["id"]]
        ambiguous = api.post("/api/v1/forwards", json={"target_address": "10.53.0.5", "target_port": 22,
                                                       "gateway": "twin-router"})
        assert ambiguous.status_code == 422 and "router id" in ambiguous.json()["error"]["message"]
        tenant.close()
