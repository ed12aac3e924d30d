"""A forward id is a connection mark in the kernel: never handed out twice, even by a create that died between its
kernel change and its commit (design.md, "The nftables shape")."""

from __future__ import annotations


import httpx
from sqlalchemy import event
from sqlalchemy.orm import Session

from labgate.db.models import Forward
from tests.api.conftest import FORWARDS, Api, assert_error, db_count, db_file, gw
from tests.conftest import make_settings
from tests.harness import RawConnection, running_server


def test_a_create_that_never_committed_does_not_give_its_id_to_the_next_forward(api: Api) -> None:
    first = api.create(name="first")
    failed_at: list[int] = []

    def die_at_commit(session: Session) -> None:
        # The kernel already has the new forward's elements (the sync ran): fail the commit, as a crash would.
        if session.in_nested_transaction():
            return  # the allocation's savepoint, not the commit
        new = [o for o in session.identity_map.values() if isinstance(o, Forward) and o.id != first["id"]]
        if new and not failed_at:
            failed_at.append(new[0].id)
            raise RuntimeError("killed before commit")

    event.listen(Session, "before_commit", die_at_commit)
    try:
        status = api.alice.post(FORWARDS, json={"target_address": "10.9.0.6", "target_port": 22,
                                                "name": "lost"}).status_code
    except httpx.HTTPError:  # the server may drop the connection on an unexpected error: the same outcome
        status = 500
    finally:
        event.remove(Session, "before_commit", die_at_commit)
    assert status == 500 and failed_at
    assert db_count(api.url) == 1
    # The kernel was put back to the committed state...
    ids = api.server.kernel().elements("labgate_default", "ids")
    assert {v for k, v in ids.items() if k != "0.0.0.0 . tcp . 0"} == {str(first["id"])}  # but the sentinel
    # ...and the id the kernel saw is never named again.
    with api.server.client(api.tokens["alice"]) as fresh:  # the dropped connection is not reused
        after = fresh.post(FORWARDS, json={"target_address": "10.9.0.7", "target_port": 22, "name": "after"}).json()
    assert after["id"] > failed_at[0] > first["id"]


def test_ids_are_not_reused_after_a_delete(api: Api) -> None:
    a = api.create(name="a")
    b = api.create(name="b")
    assert api.alice.delete(f"{FORWARDS}/{b['id']}").status_code == 204
    c = api.create(name="c")
    assert c["id"] > b["id"] > a["id"]


def sequence(url: str) -> dict[str, int]:
    """The id counters, read straight from the database: SQLite's AUTOINCREMENT counters, PostgreSQL's sequences
    (by table name)."""
    con = RawConnection(url)
    try:
        if con.postgres:
            return {name.removesuffix("_id_seq"): value for name, value in con.execute(
                "SELECT sequencename, last_value FROM pg_sequences WHERE last_value IS NOT NULL").fetchall()}
        return dict(con.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    finally:
        con.close()


def test_a_refused_create_takes_no_id(database_url: str) -> None:
    """A create refused with 409 (port_taken, range_exhausted, quota_exceeded) changes nothing, not even the id
    counter: the next forward made gets the id right after the last one. (Ids are connection marks, a finite space
    refused requests must not use up.)"""
    settings = make_settings(database_url, gateways=[gw(port_range=["4000-4003"])])
    settings.limits.forwards_per_owner = 2
    with running_server(settings) as srv, srv.client(srv.token("alice")) as alice, \
            srv.client(srv.token("bob")) as bob:
        def create(client: httpx.Client, **body: object) -> httpx.Response:
            return client.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22, **body})

        first = create(alice, external_port=4000)
        assert first.status_code == 201, first.text
        counters = sequence(database_url)
        assert_error(create(bob, external_port=4000), 409, "port_taken")
        assert_error(create(bob, port_count=4), 409, "range_exhausted")
        assert sequence(database_url) == counters
        second = create(alice, port_count=2)
        assert second.status_code == 201, second.text
        assert second.json()["id"] == first.json()["id"] + 1
        counters = sequence(database_url)
        assert_error(create(alice), 409, "quota_exceeded")
        assert_error(create(bob, external_port=4002, port_count=2), 409, "port_taken")
        assert sequence(database_url) == counters
        third = create(bob)
        assert third.status_code == 201, third.text
        assert third.json()["id"] == second.json()["id"] + 1
