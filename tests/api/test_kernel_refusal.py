"""What the API does when the kernel refuses, on the in-memory kernel (dataplane/fake.py): 503 with the reason,
no row and no rule left behind, and the next change repairs the gateway. The kernel tests prove the same with real
nftables; these run without root and check the database and the kernel state exactly."""

from __future__ import annotations

from tests.api.conftest import FORWARDS, Api, db_count, db_rows

EXT = "198.51.100.1"
SENTINEL_KEY = "0.0.0.0 . tcp . 0"  # render.SENTINELS: in every full render, never a forward


def ids(api: Api) -> dict[str, str | None]:
    return {k: v for k, v in api.server.kernel().elements("labgate_default", "ids").items() if k != SENTINEL_KEY}


def test_every_forward_is_in_the_kernel_when_the_api_answers(api: Api) -> None:
    a = api.create(name="a")
    b = api.create(name="b", port_count=2)
    assert ids(api) == {f"{EXT} . tcp . {a['external_port']}": str(a["id"]),
                        f"{EXT} . tcp . {b['external_port']}": str(b["id"]),
                        f"{EXT} . tcp . {b['external_port'] + 1}": str(b["id"])}
    targets = api.server.kernel().elements("labgate_default", "targets")
    assert targets[f"{EXT} . tcp . {b['external_port'] + 1}"] == "10.9.0.5 . 23"
    api.alice.patch(f"{FORWARDS}/{a['id']}", json={"enabled": False})
    api.alice.delete(f"{FORWARDS}/{b['id']}")
    assert ids(api) == {}
    assert api.server.kernel().cuts == [a["id"], b["id"]]  # disabled and deleted: open sessions cut


def test_a_refused_create_is_a_503_and_leaves_nothing(api: Api) -> None:
    kept = api.create(name="kept")
    before_rows, before_kernel = db_rows(api.url), api.server.kernel().dump()
    api.server.kernel().refuse_next(3)  # the partial batch, the full re-render, and its fallback
    resp = api.alice.post(FORWARDS, json={"target_address": "10.9.0.6", "target_port": 22})
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["code"] == "dataplane_unavailable" and "refused" in error["message"]
    assert db_rows(api.url) == before_rows and api.server.kernel().dump() == before_kernel
    assert api.alice.get("/api/v1/gateways").json()[0]["status"] == "error"
    assert api.alice.get(f"{FORWARDS}/{kept['id']}").json()["status"] == "error"
    # The kernel takes changes again: the next create repairs the gateway and lands, on the port just released.
    again = api.create(target_address="10.9.0.6")
    assert again["external_port"] == kept["external_port"] + 1 and again["status"] == "active"
    assert set(ids(api).values()) == {str(kept["id"]), str(again["id"])}
    assert api.alice.get("/api/v1/gateways").json()[0]["status"] == "ok"


def test_refused_patch_and_delete_change_nothing(api: Api) -> None:
    fwd = api.create(name="vm", description="old")
    before_rows, before_kernel = db_rows(api.url), api.server.kernel().dump()
    api.server.kernel().refuse_next(3)
    assert api.alice.patch(f"{FORWARDS}/{fwd['id']}", json={"target_address": "10.9.0.9"}).status_code == 503
    api.server.kernel().refuse_next(3)
    assert api.alice.delete(f"{FORWARDS}/{fwd['id']}").status_code == 503
    assert db_rows(api.url) == before_rows and api.server.kernel().dump() == before_kernel
    assert api.server.kernel().cuts == []  # nothing was cut for a change that did not happen
    got = api.alice.get(f"{FORWARDS}/{fwd['id']}").json()
    assert got["target_address"] == "10.9.0.5" and got["description"] == "old"


def test_an_element_deleted_by_hand_does_not_fail_the_next_change(api: Api) -> None:
    a = api.create(name="a")
    b = api.create(name="b")
    kernel = api.server.kernel()
    kernel.apply(f"delete element ip labgate_default ids {{ {EXT} . tcp . {b['external_port']} }}")
    assert api.alice.delete(f"{FORWARDS}/{b['id']}").status_code == 204  # its delete is refused, repaired, done
    assert ids(api) == {f"{EXT} . tcp . {a['external_port']}": str(a["id"])}
    assert db_count(api.url) == 1 and api.alice.get("/api/v1/gateways").json()[0]["status"] == "ok"


def test_a_forward_the_kernel_refuses_is_refused_alone(api: Api) -> None:
    """One user's change the kernel will not take must not put the gateway, and everyone's forwards, in error."""
    a = api.create(name="a")
    api.server.kernel().refuse_matching(" . 203.0.113.0/24")  # the kernel refuses this source element
    resp = api.bob.post(FORWARDS, json={"target_address": "10.9.0.6", "target_port": 22,
                                        "allowed_sources": ["203.0.113.0/24"]})
    assert resp.status_code == 422 and "kernel refused this change" in resp.json()["error"]["message"]
    assert db_count(api.url) == 1
    assert api.alice.get("/api/v1/gateways").json()[0]["status"] == "ok"
    assert api.alice.get(f"{FORWARDS}/{a['id']}").json()["status"] == "active"
    batches = len(api.server.kernel().batches)
    api.create(name="c")  # others' changes are partial again at once
    assert len(api.server.kernel().batches) == batches + 1


def test_a_table_deleted_behind_labgates_back_is_rebuilt_from_the_database(api: Api) -> None:
    a = api.create(name="a")
    kernel = api.server.kernel()
    del kernel.tables["labgate_default"]
    assert api.server.labgate.dataplane.reconcile_once() is True
    assert ids(api) == {f"{EXT} . tcp . {a['external_port']}": str(a["id"])}
