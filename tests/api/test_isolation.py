"""Per-owner isolation: someone else's forward is reported exactly like a missing one; admins see everyone's."""

from __future__ import annotations

from tests.api.conftest import FORWARDS, Api, assert_error, db_rows


def test_bob_gets_404_not_403_on_alices_forward_and_changes_nothing(api: Api) -> None:
    fwd = api.create(api.alice, name="centos1", description="alice's")
    before = db_rows(api.url)
    missing = fwd["id"] + 1000
    for method, body in (("GET", None), ("PATCH", {"description": "bob was here"}), ("PATCH", {"enabled": False}),
                         ("DELETE", None)):
        theirs = api.bob.request(method, f"{FORWARDS}/{fwd['id']}", json=body)
        err = assert_error(theirs, 404, "not_found")
        # indistinguishable from a forward that does not exist at all
        nothing = assert_error(api.bob.request(method, f"{FORWARDS}/{missing}", json=body), 404, "not_found")
        assert err["message"].replace(str(fwd["id"]), "N") == nothing["message"].replace(str(missing), "N")
        assert "alice" not in theirs.text
    assert db_rows(api.url) == before
    got = api.alice.get(f"{FORWARDS}/{fwd['id']}").json()
    assert got["description"] == "alice's" and got["enabled"] is True


def test_lists_and_machines_show_only_the_callers_own(api: Api) -> None:
    a = api.create(api.alice, name="centos1", target_address="10.9.0.5")
    b = api.create(api.bob, name="win1", target_address="10.9.0.6")
    alice_list = api.alice.get(FORWARDS).json()
    assert alice_list["count"] == 1 and [f["id"] for f in alice_list["results"]] == [a["id"]]
    bob_list = api.bob.get(FORWARDS).json()
    assert bob_list["count"] == 1 and [f["id"] for f in bob_list["results"]] == [b["id"]]
    # a filter that would match alice's forward finds nothing for bob
    assert api.bob.get(FORWARDS, params={"external_port": a["external_port"], "protocol": "tcp"}).json()["count"] == 0
    assert api.bob.get(FORWARDS, params={"name": "centos1"}).json()["count"] == 0
    assert [m["name"] for m in api.alice.get("/api/v1/machines").json()["results"]] == ["centos1"]
    assert [m["name"] for m in api.bob.get("/api/v1/machines").json()["results"]] == ["win1"]
    assert api.bob.get("/api/v1/machines", params={"name": "centos1"}).json()["count"] == 0


def test_non_admin_passing_owner_still_sees_only_their_own(api: Api) -> None:
    api.create(api.alice, name="centos1")
    b = api.create(api.bob, name="win1", target_address="10.9.0.6")
    resp = api.bob.get(FORWARDS, params={"owner": "alice"})
    assert resp.status_code == 200
    assert resp.json()["count"] == 1 and [f["id"] for f in resp.json()["results"]] == [b["id"]]
    machines = api.bob.get("/api/v1/machines", params={"owner": "alice"}).json()
    assert [(m["name"], m["owner"]) for m in machines["results"]] == [("win1", "bob")]


def test_admin_sees_everyones_and_can_filter_by_owner(api: Api) -> None:
    a = api.create(api.alice, name="centos1")
    b = api.create(api.bob, name="win1", target_address="10.9.0.6")
    everyone = api.admin.get(FORWARDS).json()
    assert everyone["count"] == 2
    assert {(f["id"], f["owner"]) for f in everyone["results"]} == {(a["id"], "alice"), (b["id"], "bob")}
    only_bob = api.admin.get(FORWARDS, params={"owner": "bob"}).json()
    assert [f["id"] for f in only_bob["results"]] == [b["id"]] and only_bob["count"] == 1
    assert api.admin.get(FORWARDS, params={"owner": "nobody"}).json() == {
        "count": 0, "next": None, "previous": None, "results": []}
    machines = api.admin.get("/api/v1/machines").json()
    assert {(m["name"], m["owner"]) for m in machines["results"]} == {("centos1", "alice"), ("win1", "bob")}
    assert [m["name"] for m in api.admin.get("/api/v1/machines", params={"owner": "alice"}).json()["results"]] == [
        "centos1"]


def test_admin_may_read_change_and_delete_anyones_forward(api: Api) -> None:
    a = api.create(api.alice)
    assert api.admin.get(f"{FORWARDS}/{a['id']}").json()["owner"] == "alice"
    patched = api.admin.patch(f"{FORWARDS}/{a['id']}", json={"description": "by admin"})
    assert patched.status_code == 200 and patched.json()["description"] == "by admin"
    assert patched.json()["owner"] == "alice", "an admin's change must not take over the forward"
    assert api.alice.get(f"{FORWARDS}/{a['id']}").json()["description"] == "by admin"
    assert api.admin.delete(f"{FORWARDS}/{a['id']}").status_code == 204
    assert_error(api.alice.get(f"{FORWARDS}/{a['id']}"), 404, "not_found")


def test_admin_created_forward_is_owned_by_the_admin_and_invisible_to_others(api: Api) -> None:
    f = api.create(api.admin)
    assert f["owner"] == "root"
    assert_error(api.alice.get(f"{FORWARDS}/{f['id']}"), 404, "not_found")
    assert api.alice.get(FORWARDS).json()["count"] == 0


def test_machines_with_the_same_name_of_two_owners_stay_apart(api: Api) -> None:
    api.create(api.alice, name="shared", target_address="10.9.0.5")
    api.create(api.bob, name="shared", target_address="10.9.0.6")
    a = api.alice.get("/api/v1/machines").json()["results"]
    assert [(m["name"], m["addresses"]) for m in a] == [("shared", ["10.9.0.5"])]
    everyone = api.admin.get("/api/v1/machines").json()
    assert everyone["count"] == 2
    assert sorted((m["owner"], tuple(m["addresses"])) for m in everyone["results"]) == [
        ("alice", ("10.9.0.5",)), ("bob", ("10.9.0.6",))]
