"""The database is the truth: a new server on the same SQLite file has the same forwards and the same taken ports."""

from __future__ import annotations

from tests.api.conftest import FORWARDS, api_for, assert_error, db_rows, gw


def test_restart_keeps_forwards_ports_tokens_and_ids(database_url: str) -> None:
    gateways = [gw(port_range=["4000-4005"])]
    with api_for(database_url, gateways) as first:
        a = first.create(name="centos1", kind="centos", allowed_sources=["203.0.113.0/24"], description="keep me")
        b = first.create(port_count=2, target_port=5900, enabled=False)                     # 4001-4002
        c = first.create(protocol="udp", external_port=4003)
        d = first.create(first.bob, target_address="10.9.0.6")                             # 4003 tcp
        gone = first.create(target_address="10.9.0.7")                                     # 4004
        assert first.alice.delete(f"{FORWARDS}/{gone['id']}").status_code == 204
        tokens = first.tokens
        listed_before = first.admin.get(FORWARDS).json()
        rows_before = db_rows(database_url)
    assert rows_before["forwards"], "the first server wrote to the file"

    with api_for(database_url, gateways) as second:
        assert db_rows(database_url) == rows_before
        # the old tokens still work on the new server
        old = second.server.client(tokens["alice"])
        try:
            assert old.get(f"{FORWARDS}/{a['id']}").json() == a
        finally:
            old.close()
        assert second.admin.get(FORWARDS).json()["results"] == listed_before["results"]
        assert second.alice.get(f"{FORWARDS}/{b['id']}").json() == b
        assert second.alice.get(f"{FORWARDS}/{c['id']}").json() == c
        assert second.bob.get(f"{FORWARDS}/{d['id']}").json() == d
        assert_error(second.alice.get(f"{FORWARDS}/{gone['id']}"), 404, "not_found")
        # taken ports stay taken: explicit requests name the holder, auto allocation skips them
        err = assert_error(second.admin.post(FORWARDS, json={"target_address": "10.9.0.9", "target_port": 1,
                                                             "external_port": 4002}), 409, "port_taken")
        assert err["holder"] == b["id"]
        err = assert_error(second.admin.post(FORWARDS, json={"target_address": "10.9.0.9", "target_port": 1,
                                                             "protocol": "udp", "external_port": 4003}), 409,
                           "port_taken")
        assert err["holder"] == c["id"]
        fresh = second.create(target_address="10.9.0.9")
        assert fresh["external_port"] == 4004, "the port freed before the restart is the lowest free one"
        assert fresh["id"] > gone["id"], "ids are never reused, even across a restart"
        assert second.create(target_address="10.9.0.10")["external_port"] == 4005
        assert_error(second.alice.post(FORWARDS, json={"target_address": "10.9.0.11", "target_port": 1}), 409,
                     "range_exhausted")
        [g] = second.alice.get("/api/v1/gateways").json()
        assert g["ports_free"] == {"tcp": 0, "udp": 5}
        assert g["forwards"] == 6
