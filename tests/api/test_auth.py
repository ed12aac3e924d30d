"""Authentication: a bearer token on everything but /healthz; revoked tokens refused; secrets stored only hashed."""

from __future__ import annotations

import pytest

from labgate.core.tokens import create_token, hash_token, list_tokens, revoke_token
from tests.api.conftest import FORWARDS, Api, assert_error, db_file, db_rows
from tests.harness import RawConnection


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
    con = RawConnection(api.url)
    try:
        row = con.execute("SELECT id FROM tokens WHERE token_hash = ?", (hash_token(secret),)).fetchone()
    finally:
        con.close()
    assert row is not None
    return row[0]


@pytest.mark.sqlite_only  # about SQLite's own files and locks
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


# --- roles (issue 11: admin, user, readonly, metrics) --------------------------------------------------------------
ROLES = ("admin", "user", "readonly", "metrics")
OK = {"GET": 200, "POST": 201, "PATCH": 200, "DELETE": 204}
# endpoint kind -> the roles allowed (everyone else: 403 `forbidden`)
ALLOWED = {"read": {"admin", "user", "readonly"}, "write": {"admin", "user"}, "admin": {"admin"},
           "metrics": {"admin", "user", "readonly", "metrics"}}


def role_endpoints(fid: int, doomed_fid: int, doomed_token: int) -> list[tuple[str, str, dict | None, str]]:
    """Every authenticated endpoint of the API, with the kind of access it needs. `fid` and `doomed_fid` are the
    caller's own forwards; `doomed_token` a token the call may revoke."""
    return [
        ("GET", FORWARDS, None, "read"),
        ("GET", f"{FORWARDS}/{fid}", None, "read"),
        ("GET", "/api/v1/machines", None, "read"),
        ("GET", "/api/v1/gateways", None, "read"),
        ("GET", "/api/v1/events", None, "read"),
        ("GET", "/api/v1/ddns", None, "read"),
        ("GET", "/metrics", None, "metrics"),
        ("POST", FORWARDS, {"target_address": "10.9.0.6", "target_port": 22}, "write"),
        ("PATCH", f"{FORWARDS}/{fid}", {"description": "changed"}, "write"),
        ("DELETE", f"{FORWARDS}/{doomed_fid}", None, "write"),
        ("GET", "/api/v1/tokens", None, "admin"),
        ("POST", "/api/v1/tokens", {"owner": "dave"}, "admin"),
        ("DELETE", f"/api/v1/tokens/{doomed_token}", None, "admin"),
        ("GET", "/api/v1/audit", None, "admin"),
    ]


def _table_rows(url: str, table: str) -> list[tuple]:
    """Every row of `table`; of tokens, every column but last_used_at (which a use of any token may move)."""
    columns = "id, owner, token_hash, role, created_at, created_by, expires_at, allowed_networks, revoked, " \
              "revoked_at" if table == "tokens" else "*"
    con = RawConnection(url)
    try:
        return con.execute(f"SELECT {columns} FROM {table} ORDER BY id").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("role", ROLES)
def test_every_role_against_every_endpoint(api: Api, role: str) -> None:
    owner = f"{role}-owner"
    setup = api.server.client(api.server.token(owner))  # a user token of the same owner makes their forwards
    fid = setup.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22}).json()["id"]
    doomed = setup.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 80}).json()["id"]
    doomed_token = _token_id(api, api.server.token("victim"))
    caller = api.server.client(create_token(api.server.labgate.db, owner, role=role))
    for method, path, body, kind in role_endpoints(fid, doomed, doomed_token):
        before = (db_rows(api.url), _table_rows(api.url, "tokens"), _table_rows(api.url, "audit"))
        resp = caller.request(method, path, json=body)
        if role in ALLOWED[kind]:
            assert resp.status_code == OK[method], (role, method, path, resp.text)
        else:
            err = assert_error(resp, 403, "forbidden")
            assert role in err["message"], err
            assert (db_rows(api.url), _table_rows(api.url, "tokens"), _table_rows(api.url, "audit")) == before, \
                f"a refused {method} {path} by a {role} token changed the database"
    setup.close()
    caller.close()


def test_a_readonly_token_reads_only_its_owners_forwards(api: Api) -> None:
    mine = api.create(name="mine")
    theirs = api.create(api.bob, name="theirs", target_port=80)
    ro = api.server.client(create_token(api.server.labgate.db, "alice", role="readonly"))
    assert [f["id"] for f in ro.get(FORWARDS).json()["results"]] == [mine["id"]]
    assert ro.get(f"{FORWARDS}/{mine['id']}").json()["name"] == "mine"
    assert_error(ro.get(f"{FORWARDS}/{theirs['id']}"), 404, "not_found")
    assert [m["name"] for m in ro.get("/api/v1/machines").json()["results"]] == ["mine"]
    # a write is 403 even on its own forward, and even when the body is fine
    assert_error(ro.patch(f"{FORWARDS}/{mine['id']}", json={"enabled": False}), 403, "forbidden")
    assert_error(ro.delete(f"{FORWARDS}/{mine['id']}"), 403, "forbidden")
    assert api.alice.get(f"{FORWARDS}/{mine['id']}").json()["enabled"] is True
    ro.close()


def test_existing_admin_flag_and_principal_keep_working(api: Api) -> None:
    from labgate.core.tokens import Principal, authenticate

    admin = authenticate(api.server.labgate.db, api.tokens["root"], "127.0.0.1")
    user = authenticate(api.server.labgate.db, api.tokens["alice"])
    assert (admin.role, admin.admin, admin.client) == ("admin", True, "127.0.0.1")
    assert (user.role, user.admin, user.owner, user.client) == ("user", False, "alice", None)
    assert Principal(owner="vlab-user", admin=False).role == "user"  # how the vLab compat API builds its caller
    assert Principal("x", True, 7).admin and Principal("x", True, 7).token_id == 7
    # every admin keeps seeing everyone's forwards
    api.create(api.bob, name="b1")
    assert [f["owner"] for f in api.admin.get(FORWARDS).json()["results"]] == ["bob"]
