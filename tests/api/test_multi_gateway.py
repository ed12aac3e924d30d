"""Several gateways in one service: `gateway` is required on create, and each allocates independently."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.api.conftest import FORWARDS, Api, api_for, assert_error, db_rows, gw


@pytest.fixture
def two(database_url: str) -> Iterator[Api]:
    with api_for(database_url, [
        gw("lab1", external_address="198.51.100.1", port_range=["4000-4002"], target_networks=["10.9.0.0/24"]),
        gw("lab2", external_address="198.51.100.2", port_range=["4000-4009"], target_networks=["10.10.0.0/24"]),
    ]) as api:
        yield api


def test_gateway_is_required_when_there_are_several(two: Api) -> None:
    before = db_rows(two.url)
    err = assert_error(two.alice.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22}), 422,
                       "invalid", "gateway")
    assert "gateway" in err["message"]
    assert_error(two.alice.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22,
                                                "gateway": "default"}), 422, "invalid", "gateway")
    assert db_rows(two.url) == before


def test_each_gateway_allocates_independently(two: Api) -> None:
    a = two.create(gateway="lab1", target_address="10.9.0.5")
    b = two.create(gateway="lab2", target_address="10.10.0.5")
    assert (a["gateway"], a["external_address"], a["external_port"]) == ("lab1", "198.51.100.1", 4000)
    assert (b["gateway"], b["external_address"], b["external_port"]) == ("lab2", "198.51.100.2", 4000)
    # the same explicit port on both gateways
    assert two.create(gateway="lab1", target_address="10.9.0.6", external_port=4002)["external_port"] == 4002
    assert two.create(gateway="lab2", target_address="10.10.0.6", external_port=4002)["external_port"] == 4002
    # lab1 has one port left, then is full; lab2 is unaffected
    assert two.create(gateway="lab1", target_address="10.9.0.7")["external_port"] == 4001
    assert_error(two.alice.post(FORWARDS, json={"target_address": "10.9.0.8", "target_port": 22, "gateway": "lab1"}),
                 409, "range_exhausted")
    assert two.create(gateway="lab2", target_address="10.10.0.7")["external_port"] == 4001
    gws = {g["name"]: g for g in two.alice.get("/api/v1/gateways").json()}
    assert set(gws) == {"lab1", "lab2"}
    assert gws["lab1"]["ports_free"] == {"tcp": 0, "udp": 3} and gws["lab1"]["ports_total"] == 3
    assert gws["lab2"]["ports_free"] == {"tcp": 7, "udp": 10} and gws["lab2"]["ports_total"] == 10
    assert gws["lab1"]["external_address"] == "198.51.100.1" and gws["lab2"]["external_address"] == "198.51.100.2"
    assert (gws["lab1"]["forwards"], gws["lab2"]["forwards"]) == (3, 3)


def test_targets_are_checked_against_the_chosen_gateways_networks(two: Api) -> None:
    assert_error(two.alice.post(FORWARDS, json={"target_address": "10.10.0.5", "target_port": 22, "gateway": "lab1"}),
                 422, "invalid", "target_address")
    assert_error(two.alice.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22, "gateway": "lab2"}),
                 422, "invalid", "target_address")
    fwd = two.create(gateway="lab2", target_address="10.10.0.5")
    assert_error(two.alice.patch(f"{FORWARDS}/{fwd['id']}", json={"target_address": "10.9.0.5"}), 422, "invalid",
                 "target_address")
    assert two.alice.get(f"{FORWARDS}/{fwd['id']}").json()["target_address"] == "10.10.0.5"


def test_port_taken_is_per_gateway_and_a_freed_port_returns_to_its_own_gateway(two: Api) -> None:
    a = two.create(gateway="lab1", target_address="10.9.0.5", external_port=4001)
    err = assert_error(two.bob.post(FORWARDS, json={"target_address": "10.9.0.6", "target_port": 22,
                                                    "gateway": "lab1", "external_port": 4001}), 409, "port_taken")
    assert err.get("holder") is None  # alice's forward: not named to bob
    err = assert_error(two.admin.post(FORWARDS, json={"target_address": "10.9.0.6", "target_port": 22,
                                                      "gateway": "lab1", "external_port": 4001}), 409, "port_taken")
    assert err["holder"] == a["id"]
    assert two.create(two.bob, gateway="lab2", target_address="10.10.0.6", external_port=4001)["external_port"] == 4001
    assert two.alice.delete(f"{FORWARDS}/{a['id']}").status_code == 204
    gws = {g["name"]: g["ports_free"]["tcp"] for g in two.alice.get("/api/v1/gateways").json()}
    assert gws == {"lab1": 3, "lab2": 9}
    assert two.create(two.bob, gateway="lab1", target_address="10.9.0.6", external_port=4001)["gateway"] == "lab1"


def test_list_filter_by_gateway(two: Api) -> None:
    a = two.create(gateway="lab1", target_address="10.9.0.5")
    b = two.create(gateway="lab2", target_address="10.10.0.5")
    assert [f["id"] for f in two.alice.get(FORWARDS, params={"gateway": "lab1"}).json()["results"]] == [a["id"]]
    assert [f["id"] for f in two.alice.get(FORWARDS, params={"gateway": "lab2"}).json()["results"]] == [b["id"]]
    assert two.alice.get(FORWARDS, params={"external_port": 4000}).json()["count"] == 2
