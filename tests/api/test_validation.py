"""Input validation: 422 {"error": {"code": "invalid", "message", "field"}} naming the field; never a 500 for bad
input; never a database change on an error."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from tests.api.conftest import FORWARDS, Api, api_for, assert_error, db_count, db_rows, gw

OK = {"target_address": "10.9.0.5", "target_port": 22}


def body(**changes: Any) -> dict[str, Any]:
    out = dict(OK)
    for key, value in changes.items():
        if value is DROP:
            out.pop(key)
        else:
            out[key] = value
    return out


DROP = object()

# (request body, the field the error must name)
INVALID_CREATES: list[tuple[dict[str, Any], str]] = [
    # unknown fields, including ones the server sets itself
    (body(foo=1), "foo"),
    (body(owner="bob"), "owner"),
    (body(id=7), "id"),
    (body(status="active"), "status"),
    (body(external_address="198.51.100.1"), "external_address"),
    (body(created_at="2020-01-01T00:00:00Z"), "created_at"),
    # missing required fields
    (body(target_address=DROP), "target_address"),
    (body(target_port=DROP), "target_port"),
    # addresses that do not parse
    (body(target_address="not-an-ip"), "target_address"),
    (body(target_address=""), "target_address"),
    (body(target_address="10.9.0"), "target_address"),
    (body(target_address="10.9.0.256"), "target_address"),
    (body(target_address="10.9.0.5/32"), "target_address"),
    (body(target_address=" 10.9.0.5"), "target_address"),
    (body(target_address="010.009.000.005"), "target_address"),
    (body(target_address="10.9.0.5\x00"), "target_address"),
    (body(target_address="10.9.0.5; nft flush ruleset"), "target_address"),
    (body(target_address="x" * 65), "target_address"),
    # outside the gateway's target networks (10.9.0.0/24)
    (body(target_address="10.9.1.5"), "target_address"),
    (body(target_address="192.168.0.5"), "target_address"),
    (body(target_address="8.8.8.8"), "target_address"),
    # network and broadcast address of the target network
    (body(target_address="10.9.0.0"), "target_address"),
    (body(target_address="10.9.0.255"), "target_address"),
    # IPv6
    (body(target_address="::1"), "target_address"),
    (body(target_address="2001:db8::5"), "target_address"),
    (body(target_address="::ffff:10.9.0.5"), "target_address"),
    (body(target_address="fe80::1%eth0"), "target_address"),
    # ports
    (body(target_port=0), "target_port"),
    (body(target_port=65536), "target_port"),
    (body(target_port=-22), "target_port"),
    (body(target_port=10**30), "target_port"),
    (body(external_port=0), "external_port"),
    (body(external_port=65536), "external_port"),
    (body(external_port=3999), "external_port"),
    (body(external_port=4101), "external_port"),
    (body(external_port=22), "external_port"),
    (body(external_port=4100, port_count=2), "external_port"),
    (body(port_count=0), "port_count"),
    (body(port_count=-1), "port_count"),
    (body(port_count=1025), "port_count"),
    # names and kinds
    (body(name=""), "name"),
    (body(name="-leading-dash"), "name"),
    (body(name="has space"), "name"),
    (body(name="a" * 64), "name"),
    (body(name="semi;colon"), "name"),
    (body(name="$(reboot)"), "name"),
    (body(name="ünïcode"), "name"),
    (body(name="new\nline"), "name"),
    (body(name="../../etc/passwd"), "name"),
    (body(kind=""), "kind"),
    (body(kind="k" * 33), "kind"),
    (body(kind="two words"), "kind"),
    (body(kind="win\"dows"), "kind"),
    # protocol and gateway
    (body(protocol="icmp"), "protocol"),
    (body(protocol="TCP"), "protocol"),
    (body(protocol=""), "protocol"),
    (body(gateway="nope"), "gateway"),
    (body(gateway=""), "gateway"),
    (body(gateway="g" * 33), "gateway"),
    # allowed_sources
    (body(allowed_sources=["not-a-cidr"]), "allowed_sources"),
    (body(allowed_sources=["10.0.0.0/33"]), "allowed_sources"),
    (body(allowed_sources=["10.0.0.1", "bogus"]), "allowed_sources"),
    (body(allowed_sources=["::/0"]), "allowed_sources"),
    (body(allowed_sources=["2001:db8::/32"]), "allowed_sources"),
    (body(allowed_sources=[""]), "allowed_sources"),
    (body(allowed_sources=[f"10.0.{i}.0/24" for i in range(65)]), "allowed_sources"),
    # description
    (body(description="d" * 256), "description"),
    (body(description="nul\x00byte"), "description"),
    (body(description="line\nbreak"), "description"),
    (body(description="del\x7f"), "description"),
]

# wrong JSON types: (body, field)
WRONG_TYPES: list[tuple[dict[str, Any], str]] = [
    (body(target_port="abc"), "target_port"),
    (body(target_port=22.5), "target_port"),
    (body(target_port=[22]), "target_port"),
    (body(target_port={"p": 22}), "target_port"),
    (body(target_port=None), "target_port"),
    (body(target_address=123), "target_address"),
    (body(target_address=["10.9.0.5"]), "target_address"),
    (body(target_address=None), "target_address"),
    (body(enabled="maybe"), "enabled"),
    (body(enabled=[]), "enabled"),
    (body(enabled=None), "enabled"),
    (body(name=5), "name"),
    (body(kind=["centos"]), "kind"),
    (body(description=5), "description"),
    (body(description=None), "description"),
    (body(allowed_sources="10.0.0.0/8"), "allowed_sources"),
    (body(allowed_sources={"a": "10.0.0.0/8"}), "allowed_sources"),
    (body(allowed_sources=None), "allowed_sources"),
    (body(allowed_sources=[10]), "allowed_sources.0"),
    (body(port_count="many"), "port_count"),
    (body(port_count=None), "port_count"),
    (body(external_port="auto"), "external_port"),
    (body(protocol=6), "protocol"),
    (body(protocol=None), "protocol"),
]


def _id(case: tuple[dict[str, Any], str]) -> str:
    data, field = case
    return f"{field}:{json.dumps({k: v for k, v in data.items() if k not in OK or data[k] != OK[k]})[:40]}"


@pytest.mark.parametrize("case", INVALID_CREATES + WRONG_TYPES, ids=[_id(c) for c in INVALID_CREATES + WRONG_TYPES])
def test_invalid_create_is_422_naming_the_field(shared: Api, case: tuple[dict[str, Any], str]) -> None:
    data, field = case
    before = db_rows(shared.url)
    err = assert_error(shared.alice.post(FORWARDS, json=data), 422, "invalid", field)
    assert set(err) >= {"code", "message", "field"}
    assert db_rows(shared.url) == before


def test_the_base_body_of_the_invalid_cases_is_valid(api: Api) -> None:
    # the cases above each spoil one field of OK: the refusal is about that field, not the rest
    fwd = api.create(**OK)
    assert (fwd["target_address"], fwd["target_port"]) == (OK["target_address"], OK["target_port"])


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One server for the read-only cases of this module (each asserts it changed nothing)."""
    with api_for(f"sqlite:///{tmp_path_factory.mktemp('shared')}/labgate.db") as api:
        yield api


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A gateway whose target network is everything, so only the special-address checks can refuse."""
    url = f"sqlite:///{tmp_path_factory.mktemp('wide')}/labgate.db"
    with api_for(url, [gw(target_networks=["0.0.0.0/0"])]) as api:
        yield api


@pytest.mark.parametrize("address", ["127.0.0.1", "127.1.2.3", "169.254.169.254", "169.254.0.1", "224.0.0.1",
                                     "239.255.255.250", "0.0.0.0", "255.255.255.255", "240.0.0.1", "198.51.100.1"])
def test_special_addresses_are_refused_even_inside_the_target_networks(wide: Api, address: str) -> None:
    err = assert_error(wide.alice.post(FORWARDS, json=body(target_address=address)), 422, "invalid",
                       "target_address")
    if address != "198.51.100.1":  # that one is refused as "the gateway's external address"
        assert address in err["message"]
    assert db_rows(wide.url)["forwards"] == []


def test_an_ordinary_address_passes_the_wide_gateway(wide: Api) -> None:
    # proves the refusals above come from the special-address checks, not from the network check
    fwd = wide.create(target_address="8.8.8.8")
    assert fwd["target_address"] == "8.8.8.8"
    assert wide.alice.delete(f"{FORWARDS}/{fwd['id']}").status_code == 204


def test_small_target_networks_keep_their_edges_usable(database_url: str) -> None:
    with api_for(database_url, [gw(target_networks=["10.9.0.0/24", "10.20.0.4/31", "10.30.0.9/32"])]) as api:
        assert api.create(target_address="10.20.0.4")["target_address"] == "10.20.0.4"
        assert api.create(target_address="10.20.0.5")["target_address"] == "10.20.0.5"
        assert api.create(target_address="10.30.0.9")["target_address"] == "10.30.0.9"
        assert_error(api.alice.post(FORWARDS, json=body(target_address="10.30.0.10")), 422, "invalid",
                     "target_address")


@pytest.mark.parametrize("raw", [b"{bad", b'{"target_address": "10.9.0.5", "target_port": 22,}', b'{"target_addr',
                                 b"", b"null", b"[]", b'"string"', b"42"])
def test_malformed_or_non_object_json_is_422(shared: Api, raw: bytes) -> None:
    resp = shared.alice.post(FORWARDS, content=raw, headers={"Content-Type": "application/json"})
    assert_error(resp, 422, "invalid")
    assert db_rows(shared.url)["forwards"] == []


def test_malformed_json_names_no_field(shared: Api) -> None:
    """Regression (bug found by this suite, fixed in f24b31e): a JSON syntax error reported field "1" (the character
    offset from pydantic's loc ("body", 1)) instead of no field (labgate/api/app.py _validation)."""
    resp = shared.alice.post(FORWARDS, content=b"{bad", headers={"Content-Type": "application/json"})
    err = assert_error(resp, 422, "invalid")
    assert err["field"] is None, f"field should be null for a JSON syntax error, got {err['field']!r}"


@pytest.mark.parametrize("raw", [pytest.param(b'{"target_address": "\xff\xfe", "target_port": 22}', id="bad-utf8"),
                                 pytest.param(b"[" * 50000, id="deeply-nested")])
def test_undecodable_json_is_422_invalid(shared: Api, raw: bytes) -> None:
    """Regression (bug found by this suite, fixed in f24b31e): a body that is not decodable JSON got 400
    {"code": "http_error"} from FastAPI's generic body-parsing error; the contract promises 422 "invalid"."""
    resp = shared.alice.post(FORWARDS, content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code < 500
    assert_error(resp, 422, "invalid")


BAD_QUERIES = [
    ("limit", "0"), ("limit", "1001"), ("limit", "-5"), ("limit", "ten"), ("limit", "1.5"),
    ("offset", "-1"), ("offset", "x"),
    ("protocol", "icmp"), ("protocol", "TCP"),
    ("target_port", "0"), ("target_port", "65536"), ("target_port", "ssh"),
    ("external_port", "0"), ("external_port", "70000"), ("external_port", "4000-4010"),
    ("name", "n" * 64), ("kind", "k" * 33), ("gateway", "g" * 256), ("target_address", "a" * 65),
]


@pytest.mark.parametrize("key,value", BAD_QUERIES, ids=[f"{k}={v[:10]}" for k, v in BAD_QUERIES])
def test_bad_query_params_are_422_naming_the_param(shared: Api, key: str, value: str) -> None:
    assert_error(shared.alice.get(FORWARDS, params={key: value}), 422, "invalid", key)


@pytest.mark.parametrize("key,value", [("limit", "0"), ("limit", "1001"), ("offset", "-1"), ("name", "n" * 64)])
def test_bad_query_params_on_machines_are_422(shared: Api, key: str, value: str) -> None:
    assert_error(shared.alice.get("/api/v1/machines", params={key: value}), 422, "invalid", key)


def test_limit_1000_is_the_maximum_allowed(shared: Api) -> None:
    assert shared.alice.get(FORWARDS, params={"limit": 1000}).status_code == 200
    assert_error(shared.alice.get(FORWARDS, params={"limit": 1001}), 422, "invalid", "limit")


@pytest.mark.parametrize("path", [f"{FORWARDS}/abc", f"{FORWARDS}/1.5", f"{FORWARDS}/%20"])
def test_non_integer_forward_id_is_422(shared: Api, path: str) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        resp = shared.alice.request(method, path, json={} if method == "PATCH" else None)
        assert_error(resp, 422, "invalid", "forward_id")


@pytest.mark.parametrize("field", ["target_port", "port_count"])
def test_a_json_boolean_is_not_a_number(shared: Api, field: str) -> None:
    """Regression (bug found by this suite, fixed in f24b31e): pydantic's lax int turned JSON `true` into 1, so
    {"target_port": true} created a forward to port 1 (201). A boolean is a wrong type: 422 naming the field."""
    before = db_rows(shared.url)
    resp = shared.alice.post(FORWARDS, json=body(**{field: True}))
    try:
        assert_error(resp, 422, "invalid", field)
    finally:
        if resp.status_code == 201:
            shared.alice.delete(f"{FORWARDS}/{resp.json()['id']}")
    assert db_rows(shared.url) == before


def test_huge_forward_id_is_404_not_500(api: Api) -> None:
    """Regression (fixed in 317e40a): an id beyond SQLite's 64-bit INTEGER used to reach the database, raise
    OverflowError and answer 500."""
    huge = 10**20
    for method in ("GET", "PATCH", "DELETE"):
        data = {"description": "x"} if method == "PATCH" else None
        resp = api.alice.request(method, f"{FORWARDS}/{huge}", json=data)
        assert resp.status_code != 500, f"{method}: {resp.text}"
        assert resp.status_code in (404, 422), f"{method}: {resp.status_code} {resp.text}"


def test_huge_offset_is_not_a_500(api: Api) -> None:
    """Regression (fixed in 317e40a): an unbounded `offset` used to reach SQL OFFSET and overflow into a 500."""
    api.create()
    resp = api.alice.get(FORWARDS, params={"offset": 10**20})
    assert resp.status_code != 500, resp.text
    if resp.status_code == 200:
        assert resp.json()["results"] == []
    else:
        assert_error(resp, 422, "invalid", "offset")


def test_unknown_route_and_method_use_the_error_body(shared: Api) -> None:
    assert_error(shared.alice.get("/api/v1/nope"), 404, "not_found")
    assert_error(shared.alice.put(f"{FORWARDS}/1", json={}), 405, "method_not_allowed")


def _nasty_bodies() -> list[Any]:
    long = "A" * 100_000
    return [
        *[data for data, _ in INVALID_CREATES + WRONG_TYPES],
        {}, [], None, "x", 0, True, [OK], {"": ""},
        body(target_address=long), body(name=long), body(description=long), body(kind=long),
        body(allowed_sources=[long]), body(allowed_sources=["10.0.0.0/8"] * 10_000),
        body(target_port=2**63), body(target_port=-(2**63) - 1), body(external_port=2**64),
        body(port_count=2**70), body(target_port=1e308), body(target_port=float("-0.0")),
        body(target_address="10.9.0.5", target_port=22, **{"__proto__": {"admin": True}}),
        body(gateway="default\x00"), body(gateway="../default"), body(protocol="tcp\x00"),
        body(name="centos1\x00"), body(name="\u202ecentos"), body(kind="\ud7ff"),
        body(allowed_sources=["10.0.0.0/8\x00"]), body(allowed_sources=["0x0a000000/8"]),
        body(allowed_sources=[["10.0.0.0/8"]]), body(allowed_sources=[None]),
        body(external_port=4000, port_count=1024), body(external_port=65535, port_count=2),
        body(target_port=65535, port_count=1024),
        {"target_address": {"$ne": None}, "target_port": 22},
        {"target_address": "10.9.0.5", "target_port": "22; DROP TABLE forwards"},
        {"target_address": "10.9.0.5' OR '1'='1", "target_port": 22},
    ]


NASTY_RAW = [b"{", b"}", b"\x00", b'{"target_address": "10.9.0.5", "target_port": 22', b"\xef\xbb\xbf{}",
             b'{"target_address": "10.9.0.5", "target_port": 22, "target_port": "x"}', b"NaN",
             b'{"target_address": "10.9.0.5", "target_port": NaN}', b'{"target_address": "10.9.0.5", '
             b'"target_port": Infinity}', b"{" * 10_000 + b"}" * 10_000, b'{"a":' * 5000 + b"1" + b"}" * 5000]


def test_nasty_bodies_never_cause_a_500_nor_a_database_change(api: Api) -> None:
    seed = api.create(name="seed", description="untouched")
    before = db_rows(api.url)
    for data in _nasty_bodies():
        resp = api.alice.post(FORWARDS, json=data)
        assert 400 <= resp.status_code < 500, (repr(data)[:200], resp.status_code, resp.text[:300])
        assert resp.json()["error"]["code"] != "internal"
        assert db_rows(api.url) == before, repr(data)[:200]
    for raw in NASTY_RAW:
        for content_type in ("application/json", "text/plain"):
            resp = api.alice.post(FORWARDS, content=raw, headers={"Content-Type": content_type})
            assert 400 <= resp.status_code < 500, (raw[:60], resp.status_code, resp.text[:300])
            assert db_rows(api.url) == before, raw[:60]
    # the seed forward survived every one of them unchanged
    assert api.alice.get(f"{FORWARDS}/{seed['id']}").json() == seed


NASTY_QUERIES = [
    {"name": "\x00"}, {"name": "%"}, {"name": "' OR 1=1 --"}, {"target_address": "\x00"}, {"kind": "*"},
    {"owner": "' OR '1'='1"}, {"gateway": "%00"}, {"external_port": "4000.0"}, {"limit": "1e3"},
    {"offset": "99999999999999999999999999999"}, {"limit": "1000", "offset": "9223372036854775807"},
    {"name": "ü" * 63}, {"unknown_param": "1"},
]


def test_nasty_queries_never_cause_a_500_nor_leak_other_owners(api: Api) -> None:
    api.create(api.bob, name="bobs")
    for params in NASTY_QUERIES:
        for path in (FORWARDS, "/api/v1/machines"):
            resp = api.alice.get(path, params=params)
            assert resp.status_code in (200, 422), (path, params, resp.status_code, resp.text[:300])
            if resp.status_code == 200:
                assert resp.json()["results"] == [], (path, params)


def test_a_nul_character_in_a_query_is_refused_on_every_database(api: Api) -> None:
    """PostgreSQL cannot compare a NUL in text (it was a 500 there); no field holds one on SQLite either: 422 at
    the door, in the API's and in the vLab API's shape. (In bodies, each field refuses it: see above.)"""
    api.create(name="vm1")
    for path in (FORWARDS, "/api/v1/machines", "/api/v1/events", "/api/v1/gateways"):
        for params in ({"name": "\x00"}, {"gateway": "a\x00b"}, {"owner": "\x00"}):
            resp = api.alice.get(path, params=params)
            assert_error(resp, 422, "invalid", None)
            assert "NUL" in resp.json()["error"]["message"]
    assert api.alice.get(FORWARDS, params={"name": "vm1"}).json()["count"] == 1
    resp = api.anon.get("/api/1/ipam/portmap", params={"name": "\x00"})
    assert resp.status_code == 400 and "NUL" in resp.json()["error"], resp.text
