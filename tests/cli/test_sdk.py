"""The Python SDK (labgate.client) against a real server: every call, the idempotent helpers, and the exception
hierarchy (right class, status, code, field, holder, and a hint that says what to do)."""

from __future__ import annotations

from typing import Iterator

import pytest

import labgate.client.api as client_api
from labgate.client import (
    Client,
    ConfigError,
    Conflict,
    ConnectionFailed,
    Forward,
    Gateway,
    LabgateError,
    Machine,
    NotFound,
    PortTaken,
    RangeExhausted,
    Unauthorized,
    ValidationFailed,
)
from tests.cli.conftest import EXTERNAL, Lab, gw, lab_for
from tests.harness import database_url


@pytest.fixture
def alice(lab: Lab) -> Iterator[Client]:
    with Client(lab.url, lab.tokens["alice"]) as c:
        yield c


@pytest.fixture
def bob(lab: Lab) -> Iterator[Client]:
    with Client(lab.url, lab.tokens["bob"]) as c:
        yield c


def assert_hint(exc: LabgateError) -> None:
    assert isinstance(exc, LabgateError)
    assert isinstance(exc.hint, str) and exc.hint.strip(), f"{type(exc).__name__} has no hint: {exc.hint!r}"
    assert exc.message and str(exc) == exc.message


# --- forwards: create, get, list, update, enable, disable, delete --------------------------------------------------
def test_create_returns_typed_forward_and_server_stores_it(lab: Lab, alice: Client) -> None:
    fwd = alice.create_forward("10.9.0.5", 22, name="centos1", kind="centos", description="ssh")
    assert isinstance(fwd, Forward)
    assert (fwd.gateway, fwd.protocol, fwd.external_address, fwd.external_port) == ("default", "tcp", EXTERNAL, 4000)
    assert (fwd.target_address, fwd.target_port, fwd.port_count) == ("10.9.0.5", 22, 1)
    assert (fwd.name, fwd.kind, fwd.owner, fwd.description) == ("centos1", "centos", "alice", "ssh")
    assert fwd.enabled is True and fwd.status == "active" and fwd.allowed_sources == []
    assert fwd.external == f"{EXTERNAL}:4000"
    # The server really holds it (read without the SDK).
    raw = lab.get(fwd.id).json()
    assert raw["name"] == "centos1" and raw["external_port"] == 4000 and raw["owner"] == "alice"


def test_create_with_every_optional_field(alice: Client) -> None:
    fwd = alice.create_forward("10.9.0.6", 5900, name="desk", kind="windows", protocol="udp", external_port=4050,
                               port_count=3, allowed_sources=["203.0.113.0/24"], description="vnc displays",
                               enabled=False)
    assert (fwd.protocol, fwd.external_port, fwd.port_count) == ("udp", 4050, 3)
    assert fwd.allowed_sources == ["203.0.113.0/24"]
    assert fwd.enabled is False and fwd.status == "disabled"
    assert fwd.external == f"{EXTERNAL}:4050-4052"


def test_get_forward(alice: Client) -> None:
    created = alice.create_forward("10.9.0.5", 22, name="vm")
    got = alice.get_forward(created.id)
    assert got == created


def test_list_forwards_with_filters(alice: Client, bob: Client) -> None:
    a = alice.create_forward("10.9.0.5", 22, name="vm1", kind="centos")
    b = alice.create_forward("10.9.0.5", 3389, name="vm1", kind="centos")
    c = alice.create_forward("10.9.0.6", 22, name="vm2", kind="windows")
    d = alice.create_forward("10.9.0.6", 53, name="vm2", kind="windows", protocol="udp")
    bob.create_forward("10.9.0.5", 22, name="vm1")  # someone else's: never listed for alice
    ids = lambda fs: sorted(f.id for f in fs)  # noqa: E731
    assert ids(alice.list_forwards()) == sorted([a.id, b.id, c.id, d.id])
    assert ids(alice.list_forwards(name="vm1")) == sorted([a.id, b.id])
    assert ids(alice.list_forwards(kind="windows")) == sorted([c.id, d.id])
    assert ids(alice.list_forwards(target_address="10.9.0.6")) == sorted([c.id, d.id])
    assert ids(alice.list_forwards(target_port=22)) == sorted([a.id, c.id])
    assert ids(alice.list_forwards(protocol="udp")) == [d.id]
    # TCP and UDP share port numbers: d (udp) got the same external port as a (tcp).
    assert d.external_port == a.external_port
    assert ids(alice.list_forwards(external_port=a.external_port)) == sorted([a.id, d.id])
    assert ids(alice.list_forwards(external_port=a.external_port, protocol="tcp")) == [a.id]
    assert ids(alice.list_forwards(name="vm1", target_port=3389)) == [b.id]
    assert ids(alice.list_forwards(gateway="default")) == sorted([a.id, b.id, c.id, d.id])
    assert alice.list_forwards(name="nothing") == []
    # None filters are left out, not sent as "None".
    assert ids(alice.list_forwards(name=None, kind=None)) == ids(alice.list_forwards())
    assert all(isinstance(f, Forward) for f in alice.iter_forwards())


def test_list_forwards_follows_pages(alice: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK follows `next` until the end (page size shrunk to 2 so 5 forwards span 3 pages)."""
    made = [alice.create_forward(f"10.9.0.{i}", 22, name=f"m{i}").id for i in range(10, 15)]
    monkeypatch.setattr(client_api, "PAGE", 2)
    assert [f.id for f in alice.list_forwards()] == made
    assert [m.name for m in alice.list_machines()] == [f"m{i}" for i in range(10, 15)]


def test_update_forward(lab: Lab, alice: Client) -> None:
    fwd = alice.create_forward("10.9.0.5", 22, name="vm")
    new = alice.update_forward(fwd.id, target_address="10.9.0.7", target_port=2222, description="moved",
                               allowed_sources=["192.0.2.0/24"], kind="centos")
    assert new.id == fwd.id and new.external_port == fwd.external_port
    assert (new.target_address, new.target_port, new.description) == ("10.9.0.7", 2222, "moved")
    assert new.allowed_sources == ["192.0.2.0/24"] and new.kind == "centos"
    raw = lab.get(fwd.id).json()
    assert (raw["target_address"], raw["target_port"]) == ("10.9.0.7", 2222)


def test_enable_disable(alice: Client) -> None:
    fwd = alice.create_forward("10.9.0.5", 22)
    off = alice.disable_forward(fwd.id)
    assert off.enabled is False and off.status == "disabled"
    assert alice.get_forward(fwd.id).enabled is False
    on = alice.enable_forward(fwd.id)
    assert on.enabled is True and on.status == "active"
    assert on.external_port == fwd.external_port


def test_delete_forward(lab: Lab, alice: Client) -> None:
    fwd = alice.create_forward("10.9.0.5", 22)
    assert alice.delete_forward(fwd.id) is None
    assert lab.get(fwd.id).status_code == 404
    with pytest.raises(NotFound):
        alice.delete_forward(fwd.id)


# --- idempotent helpers ---------------------------------------------------------------------------------------------
def test_ensure_forward_creates_then_is_idempotent(lab: Lab, alice: Client) -> None:
    first = alice.ensure_forward("centos1", "10.9.0.5", 22, kind="centos")
    assert (first.name, first.target_address, first.target_port, first.kind) == ("centos1", "10.9.0.5", 22, "centos")
    second = alice.ensure_forward("centos1", "10.9.0.5", 22, kind="centos")
    assert second.id == first.id
    assert second.external_port == first.external_port
    assert second.updated_at == first.updated_at  # nothing was written
    assert [f["id"] for f in lab.forwards()] == [first.id]


def test_ensure_forward_retargets_same_id_when_address_changes(lab: Lab, alice: Client) -> None:
    first = alice.ensure_forward("centos1", "10.9.0.5", 22)
    moved = alice.ensure_forward("centos1", "10.9.0.8", 22)
    assert moved.id == first.id and moved.external_port == first.external_port
    assert moved.target_address == "10.9.0.8"
    rows = lab.forwards()
    assert len(rows) == 1 and rows[0]["target_address"] == "10.9.0.8"


def test_ensure_forward_distinguishes_port_protocol_and_updates_fields(lab: Lab, alice: Client) -> None:
    ssh = alice.ensure_forward("vm", "10.9.0.5", 22)
    rdp = alice.ensure_forward("vm", "10.9.0.5", 3389)
    dns = alice.ensure_forward("vm", "10.9.0.5", 22, protocol="udp")
    assert len({ssh.id, rdp.id, dns.id}) == 3
    assert dns.protocol == "udp"
    # Same key, a changed kind/description: updated in place.
    again = alice.ensure_forward("vm", "10.9.0.5", 22, kind="centos", description="login")
    assert again.id == ssh.id and (again.kind, again.description) == ("centos", "login")
    assert len(lab.forwards()) == 3
    # Another owner's forward of the same machine name is not "found" by alice.
    bob_fwd = Client(lab.url, lab.tokens["bob"]).ensure_forward("vm", "10.9.0.5", 22)
    assert bob_fwd.id not in {ssh.id, rdp.id, dns.id} and bob_fwd.owner == "bob"


def test_remove_machine_forwards(lab: Lab, alice: Client) -> None:
    alice.create_forward("10.9.0.5", 22, name="vm1")
    alice.create_forward("10.9.0.5", 3389, name="vm1")
    keep = alice.create_forward("10.9.0.6", 22, name="vm2")
    bobs = lab.create("bob", name="vm1")
    assert alice.remove_machine_forwards("vm1") == 2
    assert [f["id"] for f in lab.forwards()] == [keep.id]
    assert lab.get(bobs["id"], "bob").status_code == 200  # bob's vm1 untouched
    assert alice.remove_machine_forwards("vm1") == 0


# --- views ------------------------------------------------------------------------------------------------------------
def test_list_machines(alice: Client) -> None:
    a = alice.create_forward("10.9.0.5", 22, name="vm1", kind="centos")
    b = alice.create_forward("10.9.0.5", 3389, name="vm1", kind="centos")
    c = alice.create_forward("10.9.0.6", 22, name="vm2", kind="windows")
    machines = {m.name: m for m in alice.list_machines()}
    assert set(machines) == {"vm1", "vm2"}
    vm1 = machines["vm1"]
    assert isinstance(vm1, Machine)
    assert (vm1.kind, vm1.owner, vm1.addresses) == ("centos", "alice", ["10.9.0.5"])
    assert sorted(f.id for f in vm1.forwards) == sorted([a.id, b.id])
    assert all(isinstance(f, Forward) for f in vm1.forwards)
    assert [f.id for f in machines["vm2"].forwards] == [c.id]
    assert [m.name for m in alice.list_machines(kind="windows")] == ["vm2"]
    assert [m.name for m in alice.list_machines(name="vm1")] == ["vm1"]


def test_list_gateways(alice: Client) -> None:
    alice.create_forward("10.9.0.5", 22)
    (g,) = alice.list_gateways()
    assert isinstance(g, Gateway)
    assert (g.name, g.external_address, g.port_ranges, g.target_networks) == (
        "default", EXTERNAL, ["4000-4100"], ["10.9.0.0/24"])
    assert g.ports_total == 101 and g.ports_free == {"tcp": 100, "udp": 101} and g.forwards == 1


def test_health_needs_no_token(lab: Lab) -> None:
    with Client(lab.url) as c:
        assert c.health() == {"status": "ok"}


# --- errors -----------------------------------------------------------------------------------------------------------
def test_unauthorized_bad_token(lab: Lab) -> None:
    with Client(lab.url, "lg_not_a_real_token") as c, pytest.raises(Unauthorized) as ei:
        c.list_forwards()
    assert ei.value.status == 401 and ei.value.code == "unauthorized" and ei.value.exit_code == 5
    assert_hint(ei.value)
    with Client(lab.url) as c, pytest.raises(Unauthorized):  # no token at all
        c.list_gateways()


def test_not_found_missing_and_someone_elses(lab: Lab, alice: Client) -> None:
    with pytest.raises(NotFound) as missing:
        alice.get_forward(999999)
    bobs = lab.create("bob")
    with pytest.raises(NotFound) as foreign:
        alice.get_forward(bobs["id"])
    for call in (lambda: alice.update_forward(bobs["id"], description="x"),
                 lambda: alice.disable_forward(bobs["id"]), lambda: alice.delete_forward(bobs["id"])):
        with pytest.raises(NotFound):
            call()
    for exc in (missing.value, foreign.value):
        assert exc.status == 404 and exc.code == "not_found" and exc.exit_code == 3
        assert_hint(exc)
    # Someone else's forward looks exactly like a missing one, and is untouched.
    assert foreign.value.message == f"forward {bobs['id']} does not exist"
    assert lab.get(bobs["id"], "bob").json()["enabled"] is True


def test_port_taken_names_holder(alice: Client) -> None:
    holder = alice.create_forward("10.9.0.5", 22, external_port=4042)
    with pytest.raises(PortTaken) as ei:
        alice.create_forward("10.9.0.6", 22, external_port=4042)
    exc = ei.value
    assert isinstance(exc, Conflict)
    assert exc.status == 409 and exc.code == "port_taken" and exc.field == "external_port"
    assert exc.holder == holder.id and exc.exit_code == 4
    assert_hint(exc)
    assert len(alice.list_forwards()) == 1


def test_range_exhausted(tmp_path) -> None:
    with lab_for(database_url(tmp_path, "small.db"), [gw(port_range=["4000-4001"])]) as small:
        with Client(small.url, small.tokens["alice"]) as c:
            c.create_forward("10.9.0.5", 22)
            c.create_forward("10.9.0.6", 22)
            with pytest.raises(RangeExhausted) as ei:
                c.create_forward("10.9.0.7", 22)
            assert isinstance(ei.value, Conflict)
            assert ei.value.status == 409 and ei.value.code == "range_exhausted" and ei.value.exit_code == 4
            assert_hint(ei.value)
            assert len(c.list_forwards()) == 2


@pytest.mark.parametrize("call, field", [
    (lambda c: c.create_forward("10.10.0.5", 22), "target_address"),      # outside the target networks
    (lambda c: c.create_forward("10.9.0.5", 70000), "target_port"),       # port out of range
    (lambda c: c.create_forward("10.9.0.5", 22, external_port=5000), "external_port"),  # outside the range
    (lambda c: c.create_forward("not-an-ip", 22), "target_address"),
], ids=["outside-network", "bad-port", "external-outside-range", "not-an-address"])
def test_validation_failed_carries_field(alice: Client, call, field: str) -> None:
    with pytest.raises(ValidationFailed) as ei:
        call(alice)
    exc = ei.value
    assert exc.status == 422 and exc.code == "invalid" and exc.field == field and exc.exit_code == 2
    assert exc.message
    assert alice.list_forwards() == []


def test_validation_failed_has_a_hint(alice: Client) -> None:
    """Every SDK error must say what to do next (issue 4: "one exception hierarchy ... whose messages say what to
    do"). (Bug found at commit 52c3784: ValidationFailed had no default hint, so a 422 reached the user with
    hint None.)"""
    with pytest.raises(ValidationFailed) as ei:
        alice.create_forward("10.10.0.5", 22)
    assert_hint(ei.value)


def test_connection_failed_on_closed_port(closed_url: str) -> None:
    with Client(closed_url, "tok", timeout=5) as c, pytest.raises(ConnectionFailed) as ei:
        c.list_forwards()
    assert closed_url in ei.value.message and ei.value.exit_code == 6 and ei.value.status is None
    assert_hint(ei.value)


def test_config_error_without_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABGATE_URL", raising=False)
    monkeypatch.delenv("LABGATE_TOKEN", raising=False)
    with pytest.raises(ConfigError) as ei:
        Client()
    assert ei.value.exit_code == 2
    assert_hint(ei.value)


def test_env_defaults(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABGATE_URL", lab.url + "/")
    monkeypatch.setenv("LABGATE_TOKEN", lab.tokens["bob"])
    with Client() as c:
        assert c.url == lab.url
        assert c.create_forward("10.9.0.5", 22).owner == "bob"
    # Explicit arguments win over the environment.
    with Client(lab.url, lab.tokens["alice"]) as c:
        assert c.list_forwards() == []
    monkeypatch.setenv("LABGATE_TOKEN", "lg_wrong")
    with Client() as c, pytest.raises(Unauthorized):
        c.list_forwards()


def test_every_error_is_a_labgate_error() -> None:
    for cls in (ConfigError, Conflict, ConnectionFailed, NotFound, PortTaken, RangeExhausted, Unauthorized,
                ValidationFailed):
        assert issubclass(cls, LabgateError)


def test_a_url_without_scheme_is_a_config_error_not_an_unreachable_server() -> None:
    with pytest.raises(ConfigError, match="must start with http:// or https://"):
        Client("127.0.0.1:3000", "lg_x")


def test_batch_and_apply_in_one_request_each(lab: Lab, alice: Client) -> None:
    out = alice.batch(create=[{"target_address": "10.9.0.5", "target_port": 22, "name": "b1"},
                              {"target_address": "10.9.0.6", "target_port": 22, "name": "b2", "kind": None}])
    assert out["status"] == "applied" and out["created"] == 2
    b1, b2 = out["forwards"]
    assert isinstance(b1, Forward) and (b1.name, b2.name) == ("b1", "b2") and b1.status == "active"
    out = alice.batch(delete=[b1.id], create=[{"target_address": "10.9.0.7", "target_port": 80, "name": "b3"}])
    assert out["deleted"] == [b1.id] and [f.name for f in out["forwards"]] == ["b3"]
    with pytest.raises(NotFound) as err:
        alice.batch(delete=[b1.id])  # gone already: nothing else happens either
    assert err.value.field == "delete[0]"
    lab_file = [{"name": "web", "target_address": "10.9.0.8", "target_port": 80},
                {"name": "b2", "target_address": "10.9.0.6", "target_port": 22}]
    first = alice.apply_forwards(lab_file)
    assert (first["created"], first["updated"], first["unchanged"]) == (1, 0, 1)
    assert [f.name for f in first["forwards"]] == ["web", "b2"] and first["forwards"][1].id == b2.id
    moved = alice.apply_forwards([dict(lab_file[0], target_address="10.9.0.9")])
    assert moved["updated"] == 1 and moved["forwards"][0].target_address == "10.9.0.9"
    with pytest.raises(ValidationFailed) as bad:
        alice.apply_forwards([{"name": "x", "target_address": "10.10.0.1", "target_port": 22}])
    assert bad.value.field == "forwards[0].target_address"
