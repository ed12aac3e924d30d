"""PATCH and DELETE of a forward: changes are reflected, refusals change nothing, a deleted forward is gone."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Iterator

import pytest

from tests.api.conftest import FORWARDS, Api, api_for, assert_error, db_rows, parse_time


@pytest.fixture
def fwd(api: Api) -> dict[str, Any]:
    return api.create(name="centos1", kind="centos", description="ssh", target_address="10.9.0.5", target_port=22)


def patch(api: Api, fid: int, **changes: Any):
    return api.alice.patch(f"{FORWARDS}/{fid}", json=changes)


def clock_past(moment: datetime) -> None:
    """Wait until this host's clock reads later than `moment`, so that a change made now carries a later time."""
    deadline = time.monotonic() + 5
    while datetime.now(timezone.utc) <= moment:
        assert time.monotonic() < deadline, f"the clock does not pass {moment}"


def test_patch_description_is_reflected_and_bumps_updated_at(api: Api, fwd: dict) -> None:
    clock_past(parse_time(fwd["updated_at"]))
    resp = patch(api, fwd["id"], description="new words")
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["description"] == "new words"
    assert out["created_at"] == fwd["created_at"]
    assert parse_time(out["updated_at"]) > parse_time(fwd["updated_at"])
    unchanged = {k: v for k, v in fwd.items() if k not in ("description", "updated_at")}
    assert {k: out[k] for k in unchanged} == unchanged
    assert api.alice.get(f"{FORWARDS}/{fwd['id']}").json() == out


def test_patch_enabled_toggles_status(api: Api, fwd: dict) -> None:
    off = patch(api, fwd["id"], enabled=False).json()
    assert off["enabled"] is False and off["status"] == "disabled"
    assert api.alice.get(f"{FORWARDS}/{fwd['id']}").json()["status"] == "disabled"
    on = patch(api, fwd["id"], enabled=True).json()
    assert on["enabled"] is True and on["status"] == "active"
    # the port stayed with the forward throughout
    assert on["external_port"] == fwd["external_port"]


def test_patch_allowed_sources_set_normalize_and_clear(api: Api, fwd: dict) -> None:
    out = patch(api, fwd["id"], allowed_sources=["203.0.113.9/24", "198.51.100.7"]).json()
    assert out["allowed_sources"] == ["203.0.113.0/24", "198.51.100.7/32"]
    assert api.alice.get(f"{FORWARDS}/{fwd['id']}").json()["allowed_sources"] == out["allowed_sources"]
    assert patch(api, fwd["id"], allowed_sources=[]).json()["allowed_sources"] == []


def test_patch_retarget_address_and_port(api: Api, fwd: dict) -> None:
    out = patch(api, fwd["id"], target_address="10.9.0.77", target_port=2222).json()
    assert (out["target_address"], out["target_port"]) == ("10.9.0.77", 2222)
    assert out["external_port"] == fwd["external_port"] and out["id"] == fwd["id"]
    listed = api.alice.get(FORWARDS, params={"target_address": "10.9.0.77"}).json()
    assert [f["id"] for f in listed["results"]] == [fwd["id"]]
    assert api.alice.get(FORWARDS, params={"target_address": "10.9.0.5"}).json()["count"] == 0
    # the machine view follows
    machines = api.alice.get("/api/v1/machines").json()["results"]
    assert machines[0]["addresses"] == ["10.9.0.77"]


def test_patch_name_and_kind(api: Api, fwd: dict) -> None:
    out = patch(api, fwd["id"], name="win7", kind="windows").json()
    assert (out["name"], out["kind"]) == ("win7", "windows")
    assert [m["name"] for m in api.alice.get("/api/v1/machines").json()["results"]] == ["win7"]
    cleared = patch(api, fwd["id"], name=None, kind=None).json()
    assert (cleared["name"], cleared["kind"]) == (None, None)
    assert api.alice.get("/api/v1/machines").json()["count"] == 0


def test_patch_with_an_empty_body_changes_nothing(api: Api, fwd: dict) -> None:
    resp = patch(api, fwd["id"])
    assert resp.status_code == 200
    assert resp.json() == fwd


BAD_PATCHES: list[tuple[dict[str, Any], str]] = [
    ({"allowed_sources": None}, "allowed_sources"),  # opening to anyone must be said with []
    ({"foo": 1}, "foo"),
    ({"protocol": "udp"}, "protocol"),
    ({"external_port": 4050}, "external_port"),
    ({"gateway": "default"}, "gateway"),
    ({"owner": "bob"}, "owner"),
    ({"port_count": 2}, "port_count"),
    ({"id": 99}, "id"),
    ({"status": "active"}, "status"),
    ({"target_address": "10.9.1.5"}, "target_address"),
    ({"target_address": "10.9.0.255"}, "target_address"),
    ({"target_address": "127.0.0.1"}, "target_address"),
    ({"target_address": "::1"}, "target_address"),
    ({"target_address": "nope"}, "target_address"),
    ({"target_address": None}, "target_address"),
    ({"target_port": 0}, "target_port"),
    ({"target_port": 65536}, "target_port"),
    ({"target_port": "ssh"}, "target_port"),
    ({"allowed_sources": ["bogus"]}, "allowed_sources"),
    ({"allowed_sources": ["::/0"]}, "allowed_sources"),
    ({"allowed_sources": "10.0.0.0/8"}, "allowed_sources"),
    ({"name": "bad name"}, "name"),
    ({"name": ""}, "name"),
    ({"kind": "k" * 33}, "kind"),
    ({"description": "x" * 256}, "description"),
    ({"description": "tab\tchar"}, "description"),
    ({"enabled": "maybe"}, "enabled"),
    ({"enabled": None}, "enabled"),
    # a valid change together with an invalid one: all or nothing
    ({"description": "half", "target_address": "8.8.8.8"}, "target_address"),
    ({"target_address": "10.9.0.9", "allowed_sources": ["bogus"]}, "allowed_sources"),
    ({"enabled": False, "name": "bad name!"}, "name"),
    ({"description": "half", "foo": 1}, "foo"),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, dict[str, Any]]]:
    """One server and one forward for the refused patches (each asserts it changed nothing)."""
    with api_for(f"sqlite:///{tmp_path_factory.mktemp('patch')}/labgate.db") as api:
        yield api, api.create(name="centos1", kind="centos", description="ssh", allowed_sources=["203.0.113.0/24"])


@pytest.mark.parametrize("changes,field", BAD_PATCHES, ids=[str(c)[:50] for c, _ in BAD_PATCHES])
def test_invalid_patch_is_422_and_changes_nothing(shared: tuple[Api, dict], changes: dict, field: str) -> None:
    api, fwd = shared
    before = db_rows(api.url)
    assert_error(patch(api, fwd["id"], **changes), 422, "invalid", field)
    assert db_rows(api.url) == before
    assert api.alice.get(f"{FORWARDS}/{fwd['id']}").json() == fwd


def test_nasty_patches_never_cause_a_500_nor_a_change(shared: tuple[Api, dict]) -> None:
    api, fwd = shared
    before = db_rows(api.url)
    nasty: list[Any] = [None, [], "x", 5, [{"description": "x"}], {"": 1}, {"target_port": 2**64},
                        {"target_port": -(2**64)}, {"target_address": "A" * 100_000}, {"description": "A" * 100_000},
                        {"allowed_sources": ["10.0.0.0/8"] * 100}, {"allowed_sources": [None]},
                        {"allowed_sources": [["10.0.0.0/8"]]}, {"name": "x\x00"}, {"kind": {"a": 1}},
                        {"enabled": 2}, {"enabled": "2"}, {"target_port": 1e308},
                        {"target_address": 167837957}, {"description": ["a"]}]
    for data in nasty:
        resp = api.alice.patch(f"{FORWARDS}/{fwd['id']}", json=data)
        assert 400 <= resp.status_code < 500, (repr(data)[:100], resp.status_code, resp.text[:300])
        assert db_rows(api.url) == before, repr(data)[:100]
    for raw in (b"{", b"", b"\xff", b"[" * 20_000, b'{"description": "a", "description": 5}'):
        resp = api.alice.patch(f"{FORWARDS}/{fwd['id']}", content=raw, headers={"Content-Type": "application/json"})
        assert 400 <= resp.status_code < 500, (raw[:40], resp.status_code, resp.text[:300])
        assert db_rows(api.url) == before, raw[:40]
    assert api.alice.get(f"{FORWARDS}/{fwd['id']}").json() == fwd


def test_patch_target_port_null_is_422_not_500(api: Api, fwd: dict) -> None:
    """Regression (bug found by this suite, fixed in f24b31e): PATCH {"target_port": null} passed the schema and
    ForwardService.update called validation.check_port(None, ...), whose `1 <= value` raised TypeError: a 500."""
    before = db_rows(api.url)
    resp = patch(api, fwd["id"], target_port=None)
    assert resp.status_code != 500, resp.text
    assert_error(resp, 422, "invalid", "target_port")
    assert db_rows(api.url) == before


def test_patch_target_port_must_leave_room_for_the_block(api: Api) -> None:
    block = api.create(port_count=10, target_port=5900)
    assert_error(patch(api, block["id"], target_port=65530), 422, "invalid", "target_port")
    assert patch(api, block["id"], target_port=65526).json()["target_port"] == 65526


def test_patch_of_a_missing_forward_is_404(api: Api) -> None:
    assert_error(patch(api, 424242, description="x"), 404, "not_found")


def test_delete_is_204_then_404_and_frees_the_port(api: Api, fwd: dict) -> None:
    resp = api.alice.delete(f"{FORWARDS}/{fwd['id']}")
    assert resp.status_code == 204
    assert resp.content == b""
    assert_error(api.alice.get(f"{FORWARDS}/{fwd['id']}"), 404, "not_found")
    assert_error(api.alice.delete(f"{FORWARDS}/{fwd['id']}"), 404, "not_found")
    assert_error(patch(api, fwd["id"], description="x"), 404, "not_found")
    rows = db_rows(api.url)
    assert rows == {"forwards": [], "port_allocations": []}
    assert api.alice.get(FORWARDS).json()["count"] == 0
    assert api.alice.get("/api/v1/machines").json()["count"] == 0


def test_delete_of_a_disabled_block_frees_every_port(api: Api) -> None:
    block = api.create(port_count=4, enabled=False)
    assert len(db_rows(api.url)["port_allocations"]) == 4
    assert api.alice.delete(f"{FORWARDS}/{block['id']}").status_code == 204
    assert db_rows(api.url)["port_allocations"] == []
    assert api.create(port_count=4)["external_port"] == block["external_port"]
