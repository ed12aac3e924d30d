"""GET /api/v1/forwards filters and pagination; the machines (IPAM) view; the gateways view."""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest

from tests.api.conftest import FORWARDS, Api, api_for


def ids(resp: httpx.Response) -> list[int]:
    assert resp.status_code == 200, resp.text
    return [f["id"] for f in resp.json()["results"]]


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, dict[str, dict[str, Any]]]]:
    """One read-only server with a known mix of forwards (alice's, plus one of bob's that must never show)."""
    with api_for(f"sqlite:///{tmp_path_factory.mktemp('list')}/labgate.db") as api:
        made = {
            "ssh1": api.create(name="centos1", kind="centos", target_address="10.9.0.5", target_port=22),   # 4000
            "web1": api.create(name="centos1", kind="centos", target_address="10.9.0.5", target_port=80),   # 4001
            "vnc": api.create(name="win1", kind="windows", target_address="10.9.0.6", target_port=5900,
                              port_count=5),                                                              # 4002-4006
            "dns": api.create(name="dns1", kind="centos", target_address="10.9.0.7", target_port=53,
                              protocol="udp"),                                                            # udp 4000
            "anon": api.create(target_address="10.9.0.8", target_port=22),                                # 4007
        }
        made["bob"] = api.create(api.bob, name="centos1", kind="centos", target_address="10.9.0.5", target_port=22)
        yield api, made


def test_list_without_filters_is_every_own_forward_in_id_order(populated) -> None:
    api, made = populated
    resp = api.alice.get(FORWARDS)
    assert ids(resp) == [made[k]["id"] for k in ("ssh1", "web1", "vnc", "dns", "anon")]
    body = resp.json()
    assert body["count"] == 5 and body["next"] is None and body["previous"] is None
    assert body["results"][0] == made["ssh1"]


@pytest.mark.parametrize("params,expected", [
    ({"name": "centos1"}, ["ssh1", "web1"]),
    ({"name": "CENTOS1"}, []),
    ({"name": "nosuch"}, []),
    ({"kind": "centos"}, ["ssh1", "web1", "dns"]),
    ({"kind": "windows"}, ["vnc"]),
    ({"target_address": "10.9.0.5"}, ["ssh1", "web1"]),
    ({"target_address": "10.9.0.6"}, ["vnc"]),
    ({"target_port": 22}, ["ssh1", "anon"]),
    ({"target_port": 53}, ["dns"]),
    ({"external_port": 4000}, ["ssh1", "dns"]),
    ({"external_port": 4001}, ["web1"]),
    ({"external_port": 4002}, ["vnc"]),       # first port of the block
    ({"external_port": 4004}, ["vnc"]),       # a port inside the block matches
    ({"external_port": 4006}, ["vnc"]),       # last port of the block
    ({"external_port": 4007}, ["anon"]),      # the port after the block is not the block's
    ({"external_port": 4008}, []),
    ({"protocol": "udp"}, ["dns"]),
    ({"protocol": "tcp"}, ["ssh1", "web1", "vnc", "anon"]),
    ({"gateway": "default"}, ["ssh1", "web1", "vnc", "dns", "anon"]),
    ({"gateway": "other"}, []),
    ({"external_port": 4000, "protocol": "tcp"}, ["ssh1"]),
    ({"name": "centos1", "target_port": 80}, ["web1"]),
    ({"kind": "centos", "protocol": "udp", "target_address": "10.9.0.7"}, ["dns"]),
    ({"kind": "centos", "protocol": "udp", "target_address": "10.9.0.5"}, []),
])
def test_list_filters(populated, params: dict, expected: list[str]) -> None:
    api, made = populated
    resp = api.alice.get(FORWARDS, params=params)
    assert ids(resp) == [made[k]["id"] for k in expected]
    assert resp.json()["count"] == len(expected)


def test_admin_filters_combine_with_owner(populated) -> None:
    api, made = populated
    assert ids(api.admin.get(FORWARDS, params={"name": "centos1"})) == [
        made[k]["id"] for k in ("ssh1", "web1", "bob")]
    assert ids(api.admin.get(FORWARDS, params={"name": "centos1", "owner": "bob"})) == [made["bob"]["id"]]


def test_pagination_walks_every_page_with_links(populated) -> None:
    api, made = populated
    expected = [made[k]["id"] for k in ("ssh1", "web1", "vnc", "dns", "anon")]
    first = api.alice.get(FORWARDS, params={"limit": 2}).json()
    assert first["count"] == 5 and [f["id"] for f in first["results"]] == expected[:2]
    assert first["previous"] is None
    assert first["next"] is not None
    seen = [f["id"] for f in first["results"]]
    page, pages = first, 1
    while page["next"]:
        nxt = httpx.URL(page["next"])
        assert nxt.path == FORWARDS
        assert nxt.params["limit"] == "2"
        page = api.alice.get(page["next"]).json()
        assert page["count"] == 5
        assert page["previous"] is not None
        seen += [f["id"] for f in page["results"]]
        pages += 1
    assert pages == 3 and seen == expected
    assert len(page["results"]) == 1
    # previous of the last page leads back to the middle one
    back = api.alice.get(page["previous"]).json()
    assert [f["id"] for f in back["results"]] == expected[2:4]


def test_pagination_links_keep_the_filters(populated) -> None:
    api, made = populated
    page = api.alice.get(FORWARDS, params={"protocol": "tcp", "limit": 1, "offset": 1}).json()
    assert page["count"] == 4 and [f["id"] for f in page["results"]] == [made["web1"]["id"]]
    for link in (page["next"], page["previous"]):
        assert httpx.URL(link).params["protocol"] == "tcp"
    assert httpx.URL(page["previous"]).params["offset"] == "0"
    assert httpx.URL(page["next"]).params["offset"] == "2"
    assert ids(api.alice.get(page["next"])) == [made["vnc"]["id"]]


def test_offset_past_the_end_and_limit_edges(populated) -> None:
    api, made = populated
    past = api.alice.get(FORWARDS, params={"offset": 50}).json()
    assert past["count"] == 5 and past["results"] == [] and past["next"] is None
    assert past["previous"] is not None
    assert ids(api.alice.get(FORWARDS, params={"limit": 1})) == [made["ssh1"]["id"]]
    assert len(api.alice.get(FORWARDS, params={"limit": 1000}).json()["results"]) == 5
    exact = api.alice.get(FORWARDS, params={"limit": 5}).json()
    assert exact["next"] is None and len(exact["results"]) == 5


def test_default_limit_is_50(api: Api) -> None:
    for i in range(55):
        api.create(target_address=f"10.9.0.{i + 1}")
    page = api.alice.get(FORWARDS).json()
    assert page["count"] == 55 and len(page["results"]) == 50
    assert httpx.URL(page["next"]).params["offset"] == "50"
    assert len(api.alice.get(page["next"]).json()["results"]) == 5


def test_machines_grouped_by_name_with_addresses_and_forwards(populated) -> None:
    api, made = populated
    resp = api.alice.get("/api/v1/machines")
    assert resp.status_code == 200
    body = resp.json()
    assert body["count"] == 3 and body["next"] is None and body["previous"] is None
    by_name = {m["name"]: m for m in body["results"]}
    assert sorted(by_name) == ["centos1", "dns1", "win1"], "forwards without a name are not machines"
    c = by_name["centos1"]
    assert (c["kind"], c["owner"], c["addresses"]) == ("centos", "alice", ["10.9.0.5"])
    assert [f["id"] for f in c["forwards"]] == [made["ssh1"]["id"], made["web1"]["id"]]
    assert c["forwards"][0] == made["ssh1"]
    assert (by_name["win1"]["kind"], by_name["win1"]["addresses"]) == ("windows", ["10.9.0.6"])
    assert [f["port_count"] for f in by_name["win1"]["forwards"]] == [5]
    assert [f["protocol"] for f in by_name["dns1"]["forwards"]] == ["udp"]


def test_machine_with_several_addresses(api: Api) -> None:
    api.create(name="dual", kind="onefs", target_address="10.9.0.10")
    api.create(name="dual", kind="onefs", target_address="10.9.0.11", target_port=443)
    api.create(name="dual", kind="onefs", target_address="10.9.0.10", target_port=80)
    machines = api.alice.get("/api/v1/machines").json()["results"]
    assert len(machines) == 1
    assert machines[0]["addresses"] == ["10.9.0.10", "10.9.0.11"]
    assert len(machines[0]["forwards"]) == 3


def test_machines_filters_and_pagination(populated) -> None:
    api, _ = populated
    assert [m["name"] for m in api.alice.get("/api/v1/machines", params={"kind": "centos"}).json()["results"]] == [
        "centos1", "dns1"]
    assert [m["name"] for m in api.alice.get("/api/v1/machines", params={"name": "win1"}).json()["results"]] == [
        "win1"]
    page = api.alice.get("/api/v1/machines", params={"limit": 2}).json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    rest = api.alice.get(page["next"]).json()
    assert len(rest["results"]) == 1 and rest["next"] is None
    assert {m["name"] for m in page["results"] + rest["results"]} == {"centos1", "dns1", "win1"}


def test_gateways_view(populated) -> None:
    api, _ = populated
    resp = api.alice.get("/api/v1/gateways")
    assert resp.status_code == 200
    [g] = resp.json()
    assert g["name"] == "default" and g["netns"] == "" and g["external_address"] == "198.51.100.1"
    assert g["port_ranges"] == ["4000-4100"] and g["target_networks"] == ["10.9.0.0/24"]
    assert g["ports_total"] == 101
    # alice: 1 + 1 + 5 + 1 tcp ports, bob: 1 tcp port; 1 udp port
    assert g["ports_free"] == {"tcp": 101 - 9, "udp": 100}
    assert g["forwards"] == 6
    assert isinstance(g["status"], str) and g["status"]


def test_gateway_ports_free_decreases_per_protocol(api: Api) -> None:
    def free() -> dict[str, int]:
        [g] = api.alice.get("/api/v1/gateways").json()
        return g["ports_free"]

    assert free() == {"tcp": 101, "udp": 101}
    api.create(protocol="tcp")
    assert free() == {"tcp": 100, "udp": 101}
    api.create(protocol="udp")
    assert free() == {"tcp": 100, "udp": 100}
    block = api.create(protocol="udp", port_count=10)
    assert free() == {"tcp": 100, "udp": 90}
    api.create(protocol="tcp", enabled=False)
    assert free() == {"tcp": 99, "udp": 90}, "a disabled forward still holds its port"
    assert api.alice.delete(f"{FORWARDS}/{block['id']}").status_code == 204
    assert free() == {"tcp": 99, "udp": 100}
