"""Creating forwards: the contract's response, port allocation (lowest first, explicit, blocks), and conflicts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.api.conftest import FORWARDS, Api, api_for, assert_error, db_count, db_rows, gw, parse_time

CONTRACT_FIELDS = {"id", "target_address", "target_port", "name", "kind", "protocol", "gateway", "external_port",
                   "port_count", "allowed_sources", "description", "enabled", "owner", "external_address", "status",
                   "created_at", "updated_at"}


def test_201_body_has_every_field_of_the_contract(api: Api) -> None:
    body = {"target_address": "10.9.0.5", "target_port": 22, "name": "centos1", "kind": "centos",
            "protocol": "tcp", "gateway": "default", "port_count": 1, "allowed_sources": ["203.0.113.0/24"],
            "description": "ssh to centos1", "enabled": True}
    resp = api.alice.post(FORWARDS, json=body)
    assert resp.status_code == 201, resp.text
    fwd = resp.json()
    assert CONTRACT_FIELDS <= set(fwd), CONTRACT_FIELDS - set(fwd)
    for key, value in body.items():
        assert fwd[key] == value, key
    assert isinstance(fwd["id"], int) and fwd["id"] > 0
    assert fwd["owner"] == "alice"
    assert fwd["external_address"] == "198.51.100.1"
    assert fwd["external_port"] == 4000
    assert fwd["status"] == "active"
    now = datetime.now(timezone.utc)
    created, updated = parse_time(fwd["created_at"]), parse_time(fwd["updated_at"])
    assert now - timedelta(minutes=1) < created <= now + timedelta(seconds=5)
    assert created <= updated <= now + timedelta(seconds=5)
    # what GET returns is what the create returned
    assert api.alice.get(f"{FORWARDS}/{fwd['id']}").json() == fwd


def test_defaults_of_a_minimal_create(api: Api) -> None:
    fwd = api.create(target_address="10.9.0.7", target_port=3389)
    assert fwd["protocol"] == "tcp" and fwd["port_count"] == 1 and fwd["gateway"] == "default"
    assert fwd["allowed_sources"] == [] and fwd["description"] == "" and fwd["enabled"] is True
    assert fwd["name"] is None and fwd["kind"] is None
    assert fwd["status"] == "active"


def test_disabled_forward_has_status_disabled_and_still_holds_its_port(api: Api) -> None:
    fwd = api.create(enabled=False)
    assert fwd["enabled"] is False and fwd["status"] == "disabled"
    assert fwd["external_port"] == 4000
    assert api.create()["external_port"] == 4001


def test_unicode_description_round_trips(api: Api) -> None:
    text = "café ☕ – Straße 東京 " + "é" * 200
    fwd = api.create(description=text[:255])
    assert fwd["description"] == text[:255]
    assert api.alice.get(f"{FORWARDS}/{fwd['id']}").json()["description"] == text[:255]


def test_allowed_sources_are_normalized_to_networks(api: Api) -> None:
    fwd = api.create(allowed_sources=["203.0.113.7", "198.51.100.9/24", "203.0.113.7/32"])
    assert fwd["allowed_sources"] == ["203.0.113.7/32", "198.51.100.0/24"]


def test_lowest_free_port_is_allocated_first_and_freed_ports_are_reused(api: Api) -> None:
    ports = [api.create(target_address=f"10.9.0.{i}")["external_port"] for i in range(10, 15)]
    assert ports == [4000, 4001, 4002, 4003, 4004]
    ids = {f["external_port"]: f["id"] for f in api.alice.get(FORWARDS).json()["results"]}
    assert api.alice.delete(f"{FORWARDS}/{ids[4001]}").status_code == 204
    assert api.alice.delete(f"{FORWARDS}/{ids[4003]}").status_code == 204
    assert api.create()["external_port"] == 4001
    assert api.create()["external_port"] == 4003
    assert api.create()["external_port"] == 4005
    # a freed explicit port can be asked for again
    assert api.alice.delete(f"{FORWARDS}/{ids[4002]}").status_code == 204
    assert api.create(external_port=4002)["external_port"] == 4002


def test_ids_are_never_reused(api: Api) -> None:
    first = api.create()
    assert api.alice.delete(f"{FORWARDS}/{first['id']}").status_code == 204
    second = api.create()
    assert second["external_port"] == first["external_port"]
    assert second["id"] > first["id"]


def test_explicit_external_port_and_the_holder_named_on_conflict(api: Api) -> None:
    fwd = api.create(external_port=4050)
    assert fwd["external_port"] == 4050
    # auto allocation is not disturbed by it and never hands it out
    assert api.create()["external_port"] == 4000
    before = db_rows(api.url)
    err = assert_error(api.alice.post(FORWARDS, json={"target_address": "10.9.0.6", "target_port": 80,
                                                      "external_port": 4050}), 409, "port_taken", "external_port")
    assert err["holder"] == fwd["id"]  # the holder is named to its owner (and to admins), never to others
    assert f"forward {fwd['id']}" in err["message"]
    assert "4050" in err["message"]
    assert db_rows(api.url) == before


def test_tcp_and_udp_may_share_a_number(api: Api) -> None:
    tcp = api.create(protocol="tcp", target_port=53)
    udp = api.create(protocol="udp", target_port=53)
    assert (tcp["protocol"], tcp["external_port"]) == ("tcp", 4000)
    assert (udp["protocol"], udp["external_port"]) == ("udp", 4000)
    udp2 = api.create(protocol="udp", external_port=4060)
    tcp2 = api.create(protocol="tcp", external_port=4060)
    assert udp2["external_port"] == tcp2["external_port"] == 4060
    err = assert_error(api.alice.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 1,
                                                      "protocol": "udp", "external_port": 4060}), 409, "port_taken")
    assert err["holder"] == udp2["id"]


def test_port_blocks_are_consecutive_and_never_overlap(api: Api) -> None:
    a = api.create()                                     # 4000
    b = api.create(port_count=3, target_port=5900)       # 4001-4003
    c = api.create(external_port=4005)                   # 4005
    d = api.create(port_count=2, target_port=6000)       # 4004 alone is too small: 4006-4007
    e = api.create()                                     # the single hole at 4004
    assert (a["external_port"], b["external_port"], c["external_port"], d["external_port"], e["external_port"]) == (
        4000, 4001, 4005, 4006, 4004)
    assert b["port_count"] == 3 and d["port_count"] == 2
    taken: dict[int, int] = {}
    for f in (a, b, c, d, e):
        for p in range(f["external_port"], f["external_port"] + f["port_count"]):
            assert p not in taken, f"port {p} held by {taken.get(p)} and {f['id']}"
            taken[p] = f["id"]
    # the database agrees: one allocation row per port of each block
    rows = db_rows(api.url)["port_allocations"]
    assert {(r[2], r[3]) for r in rows if r[1] == "tcp"} == set(taken.items())
    # an explicit block overlapping the middle of b names b
    err = assert_error(api.alice.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 100,
                                                      "external_port": 4003, "port_count": 2}), 409, "port_taken")
    assert err["holder"] == b["id"]
    # deleting b frees its whole block
    assert api.alice.delete(f"{FORWARDS}/{b['id']}").status_code == 204
    assert api.create(port_count=3, target_port=7000)["external_port"] == 4001


def test_a_block_must_fit_inside_one_range(database_url: str) -> None:
    with api_for(database_url, [gw(port_range=["4000-4002", "5000-5009"])]) as api:
        first = api.create(port_count=4)
        assert first["external_port"] == 5000, "a 4-port block does not fit in 4000-4002"
        assert api.create(port_count=3)["external_port"] == 4000
        before = db_rows(api.url)
        for start, count in ((5008, 3), (4002, 2), (3999, 1), (4003, 1), (4999, 2), (5010, 1)):
            resp = api.alice.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22,
                                                  "external_port": start, "port_count": count})
            assert_error(resp, 422, "invalid", "external_port")
        assert db_rows(api.url) == before


def test_a_block_needs_room_on_the_target_side_too(api: Api) -> None:
    assert_error(api.alice.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 65535,
                                                "port_count": 2}), 422, "invalid", "target_port")
    assert api.create(target_port=65534, port_count=2)["port_count"] == 2


def test_409_range_exhausted_when_full_per_protocol(database_url: str) -> None:
    with api_for(database_url, [gw(port_range=["4000-4004"])]) as api:
        made = [api.create(target_address=f"10.9.0.{i}")["external_port"] for i in range(1, 6)]
        assert made == [4000, 4001, 4002, 4003, 4004]
        before = db_rows(api.url)
        assert_error(api.alice.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22}), 409,
                     "range_exhausted")
        assert_error(api.bob.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22}), 409,
                     "range_exhausted")
        assert db_rows(api.url) == before
        # UDP has its own ports
        assert api.create(protocol="udp")["external_port"] == 4000
        gws = api.alice.get("/api/v1/gateways").json()
        assert gws[0]["ports_free"] == {"tcp": 0, "udp": 4}
        # freeing one makes exactly that one available again
        victim = api.alice.get(FORWARDS, params={"external_port": 4002, "protocol": "tcp"}).json()["results"][0]
        assert api.alice.delete(f"{FORWARDS}/{victim['id']}").status_code == 204
        assert api.create()["external_port"] == 4002
        assert_error(api.alice.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22}), 409,
                     "range_exhausted")


def test_a_block_larger_than_the_free_space_is_refused_but_single_ports_still_fit(database_url: str) -> None:
    with api_for(database_url, [gw(port_range=["4000-4009"])]) as api:
        api.create(external_port=4003)
        api.create(external_port=4007)
        # free: 4000-4002 (3), 4004-4006 (3), 4008-4009 (2): no 4-block anywhere
        count = db_count(api.url)
        assert_error(api.alice.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22,
                                                    "port_count": 4}), 409, "range_exhausted")
        assert db_count(api.url) == count
        assert api.create(port_count=3)["external_port"] == 4000


@pytest.mark.parametrize("count", [1, 5])
def test_explicit_port_in_a_second_range(database_url: str, count: int) -> None:
    with api_for(database_url, [gw(port_range=["4000-4009", "50000-50100"])]) as api:
        fwd = api.create(external_port=50096, port_count=count)
        assert fwd["external_port"] == 50096 and fwd["port_count"] == count


def test_target_may_not_be_the_gateways_own_external_address(database_url: str) -> None:
    with api_for(database_url, [gw(external_address="10.9.0.1")]) as api:
        assert_error(api.alice.post(FORWARDS, json={"target_address": "10.9.0.1", "target_port": 22}), 422,
                     "invalid", "target_address")
        fwd = api.create(target_address="10.9.0.2")
        assert fwd["external_address"] == "10.9.0.1"
        assert_error(api.alice.patch(f"{FORWARDS}/{fwd['id']}", json={"target_address": "10.9.0.1"}), 422,
                     "invalid", "target_address")
        assert db_count(api.url) == 1


def test_a_port_held_by_someone_else_is_taken_without_naming_their_forward(api: Api) -> None:
    theirs = api.create(api.bob, external_port=4050)
    err = api.alice.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22,
                                         "external_port": 4050}).json()["error"]
    assert err["code"] == "port_taken" and err.get("holder") is None and str(theirs["id"]) not in err["message"]
    err = api.admin.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22,
                                         "external_port": 4050}).json()["error"]
    assert err["holder"] == theirs["id"]  # an admin is told
