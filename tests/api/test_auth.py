"""Authentication: a bearer token on everything but /healthz; revoked tokens refused; secrets stored only hashed."""

from __future__ import annotations

import sqlite3

import pytest

from labgate.core.tokens import hash_token, list_tokens, revoke_token
from tests.api.conftest import FORWARDS, Api, assert_error, db_file, db_rows


def endpoints(fid: int) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", FORWARDS, None),
        ("POST", FORWARDS, {"target_address": "10.9.0.6", "target_port": 22}),
        ("GET", f"{FORWARDS}/{fid}", None),
        ("PATCH", f"{FORWARDS}/{fid}", {"description": "changed"}),
        ("DELETE", f"{FORWARDS}/{fid}", None),
        ("GET", "/api/v1/machines", None),
        ("GET", "/api/v1/gateways", None),
        ("GET", "/metrics", None),
    ]


BAD_HEADERS = [
    pytest.param({}, id="no-header"),
    pytest.param({"Authorization": "Bearer lg_wrong-token"}, id="wrong-token"),
    pytest.param({"Authorization": "Bearer"}, id="bare-bearer"),
    pytest.param({"Authorization": "Basic YWxpY2U6cHc="}, id="basic-scheme"),
    pytest.param({"Authorization": "lg_garbage"}, id="no-scheme"),
]


@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_every_endpoint_but_healthz_refuses_without_a_valid_token(api: Api, headers: dict) -> None:
    fwd = api.create(name="c1")
    before = db_rows(api.url)
    for method, path, body in endpoints(fwd["id"]):
        resp = api.anon.request(method, path, json=body, headers=headers)
        err = assert_error(resp, 401, "unauthorized")
        assert resp.headers.get("www-authenticate") == "Bearer", (method, path)
        assert "results" not in resp.text and "10.9.0.5" not in resp.text, (method, path, resp.text)
    assert db_rows(api.url) == before, "a refused request changed the database"


def test_a_token_of_another_user_with_one_character_changed_is_refused(api: Api) -> None:
    token = api.tokens["alice"]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert_error(api.anon.get(FORWARDS, headers={"Authorization": f"Bearer {forged}"}), 401, "unauthorized")
    assert api.anon.get(FORWARDS, headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_healthz_needs_no_token_and_says_only_up(api: Api) -> None:
    resp = api.anon.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}
    # a wrong token does not break it either
    assert api.anon.get("/healthz", headers={"Authorization": "Bearer nope"}).status_code == 200


def test_a_valid_token_is_accepted_everywhere(api: Api) -> None:
    fwd = api.create()
    for method, path, body in endpoints(fwd["id"]):
        resp = api.alice.request(method, path, json=body)
        assert resp.status_code in (200, 201, 204), (method, path, resp.status_code, resp.text)


def test_a_revoked_token_is_refused_and_other_tokens_keep_working(api: Api) -> None:
    fwd = api.create()
    second = api.server.token("alice")
    assert api.alice.get(f"{FORWARDS}/{fwd['id']}").status_code == 200
    token_id = _token_id(api, api.tokens["alice"])
    assert token_id in [t["id"] for t in list_tokens(api.server.labgate.db) if t["owner"] == "alice"]
    revoke_token(api.server.labgate.db, token_id)
    assert [t["revoked"] for t in list_tokens(api.server.labgate.db) if t["id"] == token_id] == [True]
    for method, path, body in endpoints(fwd["id"]):
        assert_error(api.alice.request(method, path, json=body), 401, "unauthorized")
    # the same owner's other token still works, and sees the forward made with the revoked one
    resp = api.anon.get(f"{FORWARDS}/{fwd['id']}", headers={"Authorization": f"Bearer {second}"})
    assert resp.status_code == 200 and resp.json()["owner"] == "alice"


def _token_id(api: Api, secret: str) -> int:
    con = sqlite3.connect(db_file(api.url))
    try:
        row = con.execute("SELECT id FROM tokens WHERE token_hash = ?", (hash_token(secret),)).fetchone()
    finally:
        con.close()
    assert row is not None
    return row[0]


def test_tokens_are_stored_only_as_hashes(api: Api) -> None:
    secrets = dict(api.tokens)
    assert all(len(s) >= 32 for s in secrets.values())
    # Make sure every write reached the files we read (the main file and its write-ahead log).
    api.create()
    path = db_file(api.url)
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
    data = b"".join(p.read_bytes() for p in files)
    for owner, secret in secrets.items():
        assert secret.encode() not in data, f"{owner}'s token secret is in the database files"
        # the part after the prefix neither (no other encoding of the secret)
        assert secret[3:].encode() not in data
        assert hash_token(secret).encode() in data, "the hash should be what is stored (are we reading the DB?)"
