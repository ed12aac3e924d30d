"""Tokens (issue 11): /api/v1/tokens for admins, roles, expiry, allowed client networks, last_used_at.

The in-process test server sees every request come from 127.0.0.1."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from labgate.core.tokens import authenticate, create_token, hash_token, last_used
from tests.api.conftest import FORWARDS, Api, assert_error, db_file, parse_time
from tests.harness import RawConnection

TOKENS = "/api/v1/tokens"


def sql(api: Api, statement: str, *args: object) -> list[tuple]:
    """Read or change the database directly (not through labgate)."""
    con = RawConnection(api.url)
    try:
        rows = con.execute(statement, args).fetchall()
        con.commit()
        return rows
    finally:
        con.close()


def token_row(api: Api, token_id: int) -> dict:
    [row] = [t for t in api.admin.get(TOKENS, params={"limit": 1000}).json()["results"] if t["id"] == token_id]
    return row


def with_token(api: Api, secret: str) -> httpx.Client:
    return api.server.client(secret)


def test_an_admin_creates_a_token_whose_secret_is_shown_once(api: Api) -> None:
    resp = api.admin.post(TOKENS, json={"owner": "carol", "role": "readonly"})
    assert resp.status_code == 201, resp.text
    made = resp.json()
    secret = made["token"]
    assert secret.startswith("lg_") and len(secret) > 40
    assert resp.headers.get("cache-control") == "no-store"
    assert {k: made[k] for k in ("owner", "role", "status", "revoked", "expires_at", "allowed_networks",
                                 "last_used_at", "created_by")} == {
        "owner": "carol", "role": "readonly", "status": "active", "revoked": False, "expires_at": None,
        "allowed_networks": None, "last_used_at": None, "created_by": "root"}
    # it works, with its role
    with with_token(api, secret) as carol:
        assert carol.get(FORWARDS).status_code == 200
        assert_error(carol.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22}), 403, "forbidden")
    # the secret is never shown again: not in the list, not in the audit trail, and only its hash is stored
    listing = api.admin.get(TOKENS, params={"limit": 1000})
    audit = api.admin.get("/api/v1/audit", params={"limit": 1000})
    for text in (listing.text, audit.text):
        assert secret not in text and secret[3:] not in text and hash_token(secret) not in text
    [row] = [t for t in listing.json()["results"] if t["id"] == made["id"]]
    assert "token" not in row and "token_hash" not in row
    assert sql(api, "SELECT token_hash FROM tokens WHERE id = ?", made["id"]) == [(hash_token(secret),)]


def test_the_token_list_shows_role_expiry_and_paging(api: Api) -> None:
    for i in range(3):
        api.admin.post(TOKENS, json={"owner": f"u{i}"})
    page = api.admin.get(TOKENS, params={"limit": 2}).json()
    assert page["count"] == 6 and len(page["results"]) == 2  # alice, bob, root + 3
    assert [t["owner"] for t in page["results"]] == ["alice", "bob"]
    assert page["next"] is not None and page["previous"] is None
    rest = api.admin.get(page["next"]).json()
    assert [t["owner"] for t in rest["results"]] == ["root", "u0"]
    assert [t["role"] for t in api.admin.get(TOKENS, params={"role": "admin"}).json()["results"]] == ["admin"]
    assert [t["owner"] for t in api.admin.get(TOKENS, params={"owner": "u1"}).json()["results"]] == ["u1"]


def test_token_creation_input_is_checked(api: Api) -> None:
    past = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
    for body, field in [
        ({"owner": "carol", "role": "superuser"}, "role"),
        ({"owner": "carol", "expires_at": past}, "expires_at"),
        ({"owner": "carol", "expires_at": "2099-01-01T00:00:00"}, "expires_at"),  # no time zone
        ({"owner": "carol", "expires_at": "9999-12-31T23:59:59-01:00"}, "expires_at"),  # after year 9999 in UTC
        ({"owner": "carol", "allowed_networks": ["10.0.0.0/33"]}, "allowed_networks"),
        ({"owner": "carol", "allowed_networks": "10.0.0.0/8"}, "allowed_networks"),
        ({"owner": "bad owner!"}, "owner"),
        ({"owner": "carol", "admin": True}, "admin"),
        ({}, "owner"),
    ]:
        err = assert_error(api.admin.post(TOKENS, json=body), 422, "invalid")
        assert err["field"] == field, (body, err)
    assert [t["owner"] for t in api.admin.get(TOKENS).json()["results"]] == ["alice", "bob", "root"]


def test_expires_at_is_rfc_3339_text_only(api: Api) -> None:
    """expires_at is documented as an RFC 3339 string: a JSON number (a Unix time to pydantic's lax datetime) or
    numeric text is refused, and so is a time in another form."""
    for bad in (4102444800, 4102444800.5, "4102444800", "2099-01-01 00:00:00Z", "2099-01-01", "2099-01-01T00:00Z"):
        assert_error(api.admin.post(TOKENS, json={"owner": "carol", "expires_at": bad}), 422, "invalid",
                     "expires_at")
    assert [t["owner"] for t in api.admin.get(TOKENS).json()["results"]] == ["alice", "bob", "root"]
    made = api.admin.post(TOKENS, json={"owner": "carol", "expires_at": "2099-01-01T01:00:00+01:00"})
    assert made.status_code == 201, made.text
    assert parse_time(made.json()["expires_at"]) == datetime(2099, 1, 1, tzinfo=timezone.utc)


def test_networks_are_normalized(api: Api) -> None:
    made = api.admin.post(TOKENS, json={"owner": "carol", "allowed_networks": ["127.0.0.1/8", "2001:db8::1/32",
                                                                              "127.0.0.0/8"]}).json()
    assert made["allowed_networks"] == ["127.0.0.0/8", "2001:db8::/32"]


def test_an_expired_token_is_refused(api: Api) -> None:
    soon = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)
    made = api.admin.post(TOKENS, json={"owner": "carol", "expires_at": soon.isoformat()}).json()
    assert parse_time(made["expires_at"]) == soon
    with with_token(api, made["token"]) as carol:
        assert carol.get(FORWARDS).status_code == 200
        # time passes: the expiry is now in the past
        sql(api, "UPDATE tokens SET expires_at = ? WHERE id = ?",
            (datetime.now(timezone.utc) - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f"), made["id"])
        err = assert_error(carol.get(FORWARDS), 401, "unauthorized")
        assert "expired" in err["message"]
        assert_error(carol.get("/metrics"), 401, "unauthorized")
    assert token_row(api, made["id"])["status"] == "expired"
    assert [t["id"] for t in api.admin.get(TOKENS, params={"status": "expired"}).json()["results"]] == [made["id"]]


def test_a_token_is_refused_outside_its_allowed_networks(api: Api) -> None:
    elsewhere = api.admin.post(TOKENS, json={"owner": "carol", "allowed_networks": ["192.0.2.0/24", "::1/128"]})
    here = api.admin.post(TOKENS, json={"owner": "carol", "allowed_networks": ["10.0.0.0/8", "127.0.0.0/8"]})
    with with_token(api, elsewhere.json()["token"]) as c:
        err = assert_error(c.get(FORWARDS), 401, "unauthorized")
        assert "127.0.0.1" in err["message"]
        assert_error(c.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22}), 401, "unauthorized")
    with with_token(api, here.json()["token"]) as c:
        assert c.get(FORWARDS).status_code == 200
    # the same check in core, for a peer address given by the caller (the middleware passes request.client)
    db = api.server.labgate.db
    assert authenticate(db, elsewhere.json()["token"], "192.0.2.77").owner == "carol"
    assert authenticate(db, elsewhere.json()["token"], "::ffff:192.0.2.77").owner == "carol"
    for client in ("198.51.100.7", None, "not-an-address"):
        try:
            authenticate(db, elsewhere.json()["token"], client)
        except Exception as exc:
            assert type(exc).__name__ == "Unauthorized", exc
        else:
            raise AssertionError(f"a restricted token was accepted from {client!r}")


def test_an_admin_revokes_a_token_through_the_api(api: Api) -> None:
    made = api.admin.post(TOKENS, json={"owner": "carol"}).json()
    with with_token(api, made["token"]) as carol:
        assert carol.get(FORWARDS).status_code == 200
        assert api.admin.delete(f"{TOKENS}/{made['id']}").status_code == 204
        assert_error(carol.get(FORWARDS), 401, "unauthorized")
    row = token_row(api, made["id"])
    assert row["revoked"] is True and row["status"] == "revoked" and row["revoked_at"] is not None
    assert api.admin.delete(f"{TOKENS}/{made['id']}").status_code == 204  # again: nothing changes
    assert token_row(api, made["id"])["revoked_at"] == row["revoked_at"]
    assert_error(api.admin.delete(f"{TOKENS}/999999"), 404, "not_found")


def test_non_admins_cannot_touch_tokens(api: Api) -> None:
    bob_id = sql(api, "SELECT id FROM tokens WHERE owner = 'bob'")[0][0]
    for role in ("user", "readonly", "metrics"):
        with with_token(api, create_token(api.server.labgate.db, "alice", role=role)) as c:
            assert_error(c.get(TOKENS), 403, "forbidden")
            assert_error(c.post(TOKENS, json={"owner": "alice", "role": "admin"}), 403, "forbidden")
            assert_error(c.delete(f"{TOKENS}/{bob_id}"), 403, "forbidden")
    with api.server.client(api.tokens["bob"]) as bob:
        assert bob.get(FORWARDS).status_code == 200  # bob's token was never revoked


def test_last_used_at_is_recorded_at_most_once_a_minute(api: Api) -> None:
    made = api.admin.post(TOKENS, json={"owner": "carol"}).json()
    assert made["last_used_at"] is None
    last_used.drain()
    assert token_row(api, made["id"])["last_used_at"] is None  # creating it is not using it
    with with_token(api, made["token"]) as carol:
        assert carol.get(FORWARDS).status_code == 200
        last_used.drain()
        first = token_row(api, made["id"])["last_used_at"]
        assert first is not None and parse_time(first) >= parse_time(made["created_at"])
        for _ in range(5):
            assert carol.get(FORWARDS).status_code == 200
        last_used.drain()
        assert token_row(api, made["id"])["last_used_at"] == first  # within the minute: not written again
        # a minute and more has passed since then
        long_ago = (parse_time(first) - timedelta(minutes=2)).astimezone(timezone.utc)
        sql(api, "UPDATE tokens SET last_used_at = ? WHERE id = ?", long_ago.strftime("%Y-%m-%d %H:%M:%S.%f"),
            made["id"])
        assert carol.get(FORWARDS).status_code == 200
        last_used.drain()
        assert parse_time(token_row(api, made["id"])["last_used_at"]) > long_ago


@pytest.mark.sqlite_only  # SQLite's one write lock, held by the test
def test_recording_last_use_never_makes_a_request_wait_for_the_write_lock(api: Api) -> None:
    made = api.admin.post(TOKENS, json={"owner": "carol"}).json()
    last_used.drain()
    holder = sqlite3.connect(db_file(api.url), timeout=30, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the database's write lock
    try:
        # the busy timeout is 30 s: a request that waited for the lock would run into this 10 s client timeout
        with httpx.Client(base_url=api.server.url, headers={"Authorization": f"Bearer {made['token']}"},
                          timeout=10) as carol:
            assert carol.get(FORWARDS).status_code == 200
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    last_used.drain()
    assert token_row(api, made["id"])["last_used_at"] is not None  # written once the lock was free
