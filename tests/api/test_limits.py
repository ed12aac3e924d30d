"""Per-owner quotas: one user cannot take every port (issue 11: 11 requests of disabled 512-port blocks took all
1,000 ports of a gateway). Defaults from [limits], overrides by an admin, admins unlimited."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from labgate.config import GatewayConfig
from tests.api.conftest import FORWARDS
from tests.conftest import make_settings
from tests.harness import RawConnection, running_server

LIMITS = "/api/v1/limits"
AUDIT = "/api/v1/audit"


@pytest.fixture
def srv(database_url):
    settings = make_settings(database_url, gateways=[GatewayConfig(
        name="default", external_address="198.51.100.1", port_range=["4000-4999"], target_networks=["10.9.0.0/24"])])
    settings.limits.forwards_per_owner = 3
    settings.limits.ports_per_owner = 6
    with ExitStack() as stack:
        server = stack.enter_context(running_server(settings))
        clients = {name: stack.enter_context(server.client(server.token(name, admin=name == "root")))
                   for name in ("alice", "bob", "root")}
        yield server, clients


def create(c, expect: int = 201, **body):
    body = {"target_address": "10.9.0.5", "target_port": 22, **body}
    resp = c.post(FORWARDS, json=body)
    assert resp.status_code == expect, resp.text
    return resp.json()


def test_one_owner_cannot_take_every_port(srv):
    _, c = srv
    create(c["alice"], port_count=4, enabled=False)  # disabled forwards hold their ports too
    err = create(c["alice"], 409, port_count=4, enabled=False)["error"]
    assert err["code"] == "quota_exceeded" and "6" in err["message"] and err["field"] == "port_count"
    create(c["alice"], port_count=2)
    err = create(c["alice"], 409)["error"]  # 6 of 6 ports held
    assert err["code"] == "quota_exceeded"
    create(c["bob"], port_count=6)  # everyone else is unaffected
    for _ in range(5):
        create(c["root"], port_count=10)  # admins are not limited


def test_forward_count_limit_and_freeing_by_delete(srv):
    _, c = srv
    made = [create(c["alice"]) for _ in range(3)]
    assert create(c["alice"], 409)["error"]["code"] == "quota_exceeded"
    assert c["alice"].delete(f"{FORWARDS}/{made[0]['id']}").status_code == 204
    create(c["alice"])


def test_limits_are_read_by_their_owner_and_set_by_admins(srv):
    _, c = srv
    create(c["alice"], port_count=2)
    mine = c["alice"].get(f"{LIMITS}/alice").json()
    assert mine == {"owner": "alice", "forwards_limit": 3, "ports_limit": 6, "forwards": 1, "ports": 2,
                    "overridden": False}
    assert c["bob"].get(f"{LIMITS}/alice").status_code == 404  # someone else's limits are not shown
    assert c["alice"].put(f"{LIMITS}/alice", json={"forwards": 100}).status_code == 403  # only admins set them
    raised = c["root"].put(f"{LIMITS}/alice", json={"forwards": 10, "ports": 0}).json()
    assert raised["forwards_limit"] == 10 and raised["ports_limit"] == 0 and raised["overridden"] is True
    for _ in range(5):
        create(c["alice"], port_count=20)  # ports: 0 = no limit
    back = c["root"].put(f"{LIMITS}/alice", json={"forwards": None, "ports": None}).json()
    assert back["forwards_limit"] == 3 and back["overridden"] is False
    assert create(c["alice"], 409)["error"]["code"] == "quota_exceeded"
    assert c["root"].put(f"{LIMITS}/alice", json={"forwards": 4.0}).json()["forwards_limit"] == 4  # integral
    for bad in ({"forwards": -1}, {"ports": "5"}, {"forwards": 1.5}, {"forwards": True}, {"other": 1}):
        assert c["root"].put(f"{LIMITS}/alice", json=bad).status_code == 422, bad


def test_limits_from_the_config_file(tmp_path):
    from labgate.config import ConfigError, load_settings

    path = tmp_path / "labgate.toml"
    path.write_text("[limits]\nforwards_per_owner = 20\nports_per_owner = 0\n")
    s = load_settings(path)
    assert s.limits.forwards_per_owner == 20 and s.limits.ports_per_owner == 0
    path.write_text("[limits]\nforwards_per_owner = -1\n")
    with pytest.raises(ConfigError, match="forwards_per_owner"):
        load_settings(path)


def test_limit_changes_are_audited(srv):
    """Every change of an owner's limits is in the audit trail like every other change: who (actor, token,
    address), the limits before and after (null: the [limits] default); a refused one leaves no record."""
    server, c = srv

    def limit_entries():
        resp = c["root"].get(AUDIT, params={"object_type": "limits", "limit": 1000})
        assert resp.status_code == 200, resp.text
        return resp.json()["results"]

    assert limit_entries() == []
    assert c["root"].put(f"{LIMITS}/alice", json={"forwards": 10, "ports": 0}).status_code == 200
    assert c["root"].put(f"{LIMITS}/alice", json={"forwards": 4}).status_code == 200
    assert c["root"].put(f"{LIMITS}/alice", json={"forwards": None, "ports": None}).status_code == 200
    assert c["alice"].put(f"{LIMITS}/alice", json={"forwards": 100}).status_code == 403
    assert c["root"].put(f"{LIMITS}/alice", json={"forwards": -1}).status_code == 422
    got = limit_entries()
    con = RawConnection(server.labgate.settings.server.database)
    try:
        [(root_token,)] = con.execute("SELECT id FROM tokens WHERE owner = 'root'").fetchall()
    finally:
        con.close()
    assert [(e["action"], e["object_type"], e["object_id"], e["actor"], e["token_id"], e["client"]) for e in got] \
        == [("limits.update", "limits", None, "root", root_token, "127.0.0.1")] * 3
    assert [(e["before"], e["after"]) for e in got] == [
        ({"owner": "alice", "forwards": None, "ports": None}, {"owner": "alice", "forwards": 10, "ports": 0}),
        ({"owner": "alice", "forwards": 10, "ports": 0}, {"owner": "alice", "forwards": 4, "ports": None}),
        ({"owner": "alice", "forwards": 4, "ports": None}, {"owner": "alice", "forwards": None, "ports": None}),
    ]
    assert [e["id"] for e in c["root"].get(AUDIT, params={"action": "limits.update"}).json()["results"]] == \
        [e["id"] for e in got]
