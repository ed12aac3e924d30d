"""POST /api/v1/forwards/batch and /apply: many changes as one transaction and one kernel batch, all or nothing,
each item checked as a single create is and named in any error."""

from __future__ import annotations

from typing import Any

from labgate.db import cluster
from tests.api.conftest import FORWARDS, Api, api_for, assert_error, db_count, db_rows, gw
from tests.conftest import make_settings
from tests.harness import running_server

BATCH = f"{FORWARDS}/batch"
APPLY = f"{FORWARDS}/apply"


def items(n: int, **extra: Any) -> list[dict]:
    return [{"target_address": f"10.9.0.{2 + i % 250}", "target_port": 22 + i // 250, "name": f"vm{i}", **extra}
            for i in range(n)]


def targets(api: Api) -> dict[str, str]:
    """The kernel's translations: "external . proto . port" -> "target . port" (the sentinel left out)."""
    return {k: v for k, v in api.server.kernel().elements("labgate_default", "targets").items()
            if not k.startswith("0.0.0.0")}


def test_a_batch_creates_many_forwards_in_one_kernel_batch(api: Api) -> None:
    kernel = api.server.kernel()
    before = len(kernel.batches)
    r = api.alice.post(BATCH, json={"create": items(90)})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["status"], body["created"], body["gateway"], body["deleted"]) == ("applied", 90, "default", [])
    made = body["forwards"]
    assert [f["name"] for f in made] == [f"vm{i}" for i in range(90)]
    assert all(f["status"] == "active" and f["owner"] == "alice" for f in made)
    assert sorted(f["external_port"] for f in made) == list(range(4000, 4090))
    assert len(kernel.batches) == before + 1  # one kernel change for all of them
    assert len(targets(api)) == 90
    assert db_count(api.url) == 90
    # Each is a forward like any other: listed, audited, announced.
    assert api.alice.get(FORWARDS, params={"limit": 1}).json()["count"] == 90
    audit = api.admin.get("/api/v1/audit", params={"action": "forward.create", "limit": 1000}).json()
    assert audit["count"] == 90
    events = api.alice.get("/api/v1/events", params={"kind": "forward", "limit": 1000}).json()["results"]
    assert sum(e["fields"].get("action") == "created" for e in events) == 90


def test_one_bad_item_refuses_the_whole_batch_and_names_it(api: Api) -> None:
    kernel = api.server.kernel()
    batches = len(kernel.batches)
    bad = items(10)
    bad[5]["target_address"] = "192.0.2.9"  # outside the gateway's target networks
    assert_error(api.alice.post(BATCH, json={"create": bad}), 422, "invalid", "create[5].target_address")
    taken = api.create(external_port=4003)
    clash = items(4)
    clash[2]["external_port"] = 4003
    err = assert_error(api.alice.post(BATCH, json={"create": clash}), 409, "port_taken", "create[2].external_port")
    assert "create[2]" in err["message"]
    twice = items(3)
    twice[0]["external_port"] = twice[2]["external_port"] = 4050
    assert_error(api.alice.post(BATCH, json={"create": twice}), 409, "port_taken", "create[2].external_port")
    assert_error(api.alice.post(BATCH, json={"create": items(101)}), 409, "range_exhausted",
                 "create[100].external_port")  # 101 ports in the range, one taken
    assert_error(api.alice.post(BATCH, json={}), 422, "invalid", "create")
    assert_error(api.alice.post(BATCH, json={"create": [], "delete": [taken["id"], taken["id"]]}), 422, "invalid",
                 "delete[1]")
    # Someone else's forward is not there for alice: 404 naming the item, and her creates do not happen either.
    bobs = api.create(api.bob)
    assert_error(api.alice.post(BATCH, json={"create": items(2), "delete": [bobs["id"]]}), 404, "not_found",
                 "delete[0]")
    assert len(kernel.batches) == batches + 2  # only the two single creates reached the kernel
    assert {f[0] for f in db_rows(api.url)["forwards"]} == {taken["id"], bobs["id"]}
    # And the ports refused batches looked at are free: the next batch gets the lowest ones (bob holds 4000).
    assert bobs["external_port"] == 4000
    r = api.alice.post(BATCH, json={"create": items(3)})
    assert [f["external_port"] for f in r.json()["forwards"]] == [4001, 4002, 4004]


def test_the_kernel_refusing_the_batch_changes_nothing(api: Api) -> None:
    kept = api.create(target_address="10.9.0.100")
    api.server.kernel().refuse_matching("10.9.0.4")  # the kernel refuses the batch holding item 2's target
    err = assert_error(api.alice.post(BATCH, json={"create": items(5)}), 422, "invalid")
    assert "kernel refused" in err["message"]
    assert db_count(api.url) == 1 and list(targets(api).values()) == ["10.9.0.100 . 22"]
    api.server.kernel().refuse_matching(None)
    r = api.alice.post(BATCH, json={"create": items(5)})
    assert r.status_code == 201 and len(targets(api)) == 6, r.text
    assert api.alice.get(f"{FORWARDS}/{kept['id']}").json()["status"] == "active"


def test_deletes_and_creates_together(api: Api) -> None:
    old = api.alice.post(BATCH, json={"create": items(4)}).json()["forwards"]
    r = api.alice.post(BATCH, json={"create": items(2, target_port=80), "delete": [old[0]["id"], old[3]["id"]]})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["deleted"] == [old[0]["id"], old[3]["id"]] and body["created"] == 2
    left = {f["id"] for f in api.alice.get(FORWARDS).json()["results"]}
    assert left == {old[1]["id"], old[2]["id"], *(f["id"] for f in body["forwards"])}
    assert len(targets(api)) == 4
    assert api.alice.get(f"{FORWARDS}/{old[0]['id']}").status_code == 404


def test_quota_counts_the_whole_batch(database_url: str) -> None:
    settings = make_settings(database_url)
    settings.limits.forwards_per_owner = 5
    with running_server(settings) as srv, srv.client(srv.token("alice")) as alice:
        assert_error(alice.post(BATCH, json={"create": items(6)}), 409, "quota_exceeded")
        assert alice.post(BATCH, json={"create": items(5)}).status_code == 201


def test_a_batch_is_for_one_gateway(database_url: str) -> None:
    gateways = [gw("a", port_range=["4000-4100"]), gw("b", external_address="198.51.100.2", port_range=["4000-4100"])]
    with api_for(database_url, gateways) as api:
        two = [{"gateway": "a", **items(1)[0]}, {"gateway": "b", **items(1)[0]}]
        err = assert_error(api.alice.post(BATCH, json={"create": two}), 422, "invalid", "create")
        assert "one batch per gateway" in err["message"]
        assert api.alice.post(BATCH, json={"create": [{"gateway": "b", **i} for i in items(3)]}).status_code == 201


def test_apply_creates_what_is_missing_changes_what_moved_and_leaves_the_rest(api: Api) -> None:
    kernel = api.server.kernel()
    lab = items(3)
    r = api.alice.post(APPLY, json={"forwards": lab})
    assert r.status_code == 200, r.text
    first = r.json()
    assert (first["created"], first["updated"], first["unchanged"]) == (3, 0, 0)
    batches = len(kernel.batches)
    again = api.alice.post(APPLY, json={"forwards": lab}).json()
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 3)
    assert [f["id"] for f in again["forwards"]] == [f["id"] for f in first["forwards"]]
    assert len(kernel.batches) == batches  # nothing to change: no kernel change
    moved = [dict(lab[0], target_address="10.9.0.200"), lab[1], dict(lab[2], description="db"), *items(1, name="new")]
    r = api.alice.post(APPLY, json={"forwards": moved})
    assert r.status_code == 200, r.text
    third = r.json()
    assert (third["created"], third["updated"], third["unchanged"]) == (1, 2, 1)
    port0 = first["forwards"][0]["external_port"]
    assert targets(api)[f"198.51.100.1 . tcp . {port0}"] == "10.9.0.200 . 22"
    assert third["forwards"][2]["description"] == "db" and third["forwards"][0]["id"] == first["forwards"][0]["id"]
    assert len(kernel.batches) == batches + 1
    assert_error(api.alice.post(APPLY, json={"forwards": [{"target_address": "10.9.0.5", "target_port": 22}]}),
                 422, "invalid", "forwards[0].name")
    dup = [lab[0], dict(lab[0], target_address="10.9.0.9")]
    assert_error(api.alice.post(APPLY, json={"forwards": dup}), 422, "invalid", "forwards[1]")
    # What an item does not state is left as it is: the description set above stays.
    kept = api.alice.post(APPLY, json={"forwards": [moved[2]]}).json()
    assert kept["unchanged"] == 1
    kept = api.alice.post(APPLY, json={"forwards": [lab[2]]}).json()
    assert kept["unchanged"] == 1 and kept["forwards"][0]["description"] == "db"
    # Another owner's forward of the same name is not alice's: bob's apply creates his own.
    bob = api.bob.post(APPLY, json={"forwards": lab[:1]}).json()
    assert bob["created"] == 1 and bob["forwards"][0]["owner"] == "bob"


def test_a_batch_may_be_larger_than_a_single_request(database_url: str) -> None:
    settings = make_settings(database_url, gateways=[gw(port_range=["10000-20000"])])
    settings.server.max_body_bytes = 4096
    settings.limits.forwards_per_owner = settings.limits.ports_per_owner = 0  # no limits (500, 1000 by default)
    with running_server(settings) as srv, srv.client(srv.token("alice")) as alice:
        many = items(2000)
        assert alice.post(BATCH, json={"create": many}).status_code == 201
        assert_error(alice.post(FORWARDS, json={**many[0], "description": "x" * 5000}), 413, "too_large")
        with srv.labgate.db.reader() as r:
            assert cluster.gateway_syncs(r)["default"].applied_generation == 1  # one change, one generation
