"""Every forward change leaves an audit record in the change's own transaction: who, token, address, before and
after; a change that does not happen (refused by the kernel, invalid) leaves none."""

from __future__ import annotations

import json

from tests.api.conftest import FORWARDS, Api

AUDIT = "/api/v1/audit"


def obj(value):
    """before/after as the API gives them (objects; JSON text is accepted too)."""
    return json.loads(value) if isinstance(value, str) else value


def records(api: Api, **params) -> list[dict]:
    resp = api.admin.get(AUDIT, params={"object_type": "forward", **params})
    assert resp.status_code == 200, resp.text
    return resp.json()["results"]


def test_create_update_delete_are_recorded_with_before_and_after(api: Api) -> None:
    fwd = api.create(name="vm1", description="old")
    api.alice.patch(f"{FORWARDS}/{fwd['id']}", json={"description": "new", "target_port": 2222})
    api.alice.delete(f"{FORWARDS}/{fwd['id']}")
    trail = records(api, object_id=fwd["id"])
    assert [r["action"] for r in trail] == ["forward.create", "forward.update", "forward.delete"]
    created, updated, deleted = trail
    assert all(r["actor"] == "alice" and r["token_id"] and r["client"] == "127.0.0.1" for r in trail)
    assert created["before"] is None and obj(created["after"])["target_address"] == "10.9.0.5"
    before, after = obj(updated["before"]), obj(updated["after"])
    assert (before["description"], before["target_port"]) == ("old", 22)
    assert (after["description"], after["target_port"]) == ("new", 2222)
    assert obj(deleted["before"])["description"] == "new" and deleted["after"] is None


def test_a_change_that_did_not_happen_leaves_no_record(api: Api) -> None:
    fwd = api.create(name="vm1")
    api.server.kernel().refuse_next(3)
    assert api.alice.patch(f"{FORWARDS}/{fwd['id']}", json={"target_address": "10.9.0.9"}).status_code == 503
    assert api.alice.patch(f"{FORWARDS}/{fwd['id']}", json={"target_port": 0}).status_code == 422
    assert api.bob.delete(f"{FORWARDS}/{fwd['id']}").status_code == 404  # not bob's
    assert [r["action"] for r in records(api, object_id=fwd["id"])] == ["forward.create"]


def test_the_trail_is_for_admins_only(api: Api) -> None:
    api.create(name="vm1")
    assert api.alice.get(AUDIT).status_code == 403
    assert api.anon.get(AUDIT).status_code == 401
