"""The audit trail (issue 11): every forward and token change recorded with who, token, address, when, before and
after, in the transaction of the change; GET /api/v1/audit for admins; `audit` events to the sinks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from labgate.config import FileSinkConfig
from labgate.core.tokens import create_token
from tests.api.conftest import FORWARDS, Api, api_for, assert_error, db_file, parse_time
from tests.conftest import make_settings
from tests.harness import RawConnection, running_server

AUDIT = "/api/v1/audit"
TOKENS = "/api/v1/tokens"


def audit_rows(url: str) -> list[dict]:
    """The audit table, read straight from the database (not through labgate)."""
    con = RawConnection(url, dict_rows=True)
    try:
        # As SQLite stores them (text), whichever database: times as text, JSON columns as their JSON text.
        return [{k: v.isoformat() if isinstance(v, datetime) else json.dumps(v) if isinstance(v, (dict, list))
                 else v for k, v in dict(r).items()} for r in con.execute("SELECT * FROM audit ORDER BY id")]
    finally:
        con.close()


def token_id_of(url: str, owner: str) -> int:
    con = RawConnection(url)
    try:
        return con.execute("SELECT id FROM tokens WHERE owner = ? ORDER BY id LIMIT 1", (owner,)).fetchone()[0]
    finally:
        con.close()


def entries(api: Api, **params) -> list[dict]:
    resp = api.admin.get(AUDIT, params={"limit": 1000, **params})
    assert resp.status_code == 200, resp.text
    return resp.json()["results"]


def test_forward_changes_are_recorded_with_who_where_before_and_after(api: Api) -> None:
    fwd = api.create(name="c1")
    # each record is in the database the moment the API has answered (same transaction as the change)
    [created] = [r for r in audit_rows(api.url) if r["object_type"] == "forward"]
    assert created["action"] == "forward.create" and created["object_id"] == fwd["id"]
    api.alice.patch(f"{FORWARDS}/{fwd['id']}", json={"description": "build box", "target_port": 2222})
    assert api.alice.delete(f"{FORWARDS}/{fwd['id']}").status_code == 204
    alice_token = token_id_of(api.url, "alice")
    got = entries(api, object_type="forward")
    assert [(e["action"], e["object_id"], e["actor"], e["token_id"], e["client"]) for e in got] == [
        ("forward.create", fwd["id"], "alice", alice_token, "127.0.0.1"),
        ("forward.update", fwd["id"], "alice", alice_token, "127.0.0.1"),
        ("forward.delete", fwd["id"], "alice", alice_token, "127.0.0.1"),
    ]
    create, update, delete = got
    assert create["before"] is None and delete["after"] is None
    assert create["after"]["name"] == "c1" and create["after"]["target_port"] == 22
    assert create["after"]["external_port"] == fwd["external_port"] and create["after"]["owner"] == "alice"
    assert update["before"] == create["after"]
    assert update["after"] == {**create["after"], "description": "build box", "target_port": 2222}
    assert delete["before"] == update["after"]
    for e in got:
        assert parse_time(e["time"]) >= parse_time(fwd["created_at"]) - timedelta(seconds=1)


def test_an_admins_change_to_someone_elses_forward_names_the_admin(api: Api) -> None:
    fwd = api.create(name="c1")
    api.admin.patch(f"{FORWARDS}/{fwd['id']}", json={"enabled": False})
    [update] = entries(api, action="forward.update")
    assert update["actor"] == "root" and update["token_id"] == token_id_of(api.url, "root")
    assert (update["before"]["owner"], update["before"]["enabled"], update["after"]["enabled"]) == ("alice", True,
                                                                                                   False)


def test_a_change_that_is_refused_leaves_no_record(api: Api) -> None:
    fwd = api.create()
    before = audit_rows(api.url)
    api.server.kernel().refuse_next(3)  # the partial batch, the full re-render, and its fallback
    assert_error(api.alice.post(FORWARDS, json={"target_address": "10.9.0.6", "target_port": 22}), 503,
                 "dataplane_unavailable")
    assert_error(api.alice.post(FORWARDS, json={"target_address": "10.9.0.6", "target_port": 0}), 422, "invalid")
    assert_error(api.bob.delete(f"{FORWARDS}/{fwd['id']}"), 404, "not_found")  # someone else's
    ro = api.server.client(create_token(api.server.labgate.db, "alice", role="readonly"))
    assert_error(ro.delete(f"{FORWARDS}/{fwd['id']}"), 403, "forbidden")
    ro.close()
    after = audit_rows(api.url)
    assert [r for r in after if r["object_type"] == "forward"] == [r for r in before if r["object_type"] == "forward"]


def test_token_create_and_revoke_are_recorded_without_the_secret(api: Api) -> None:
    made = api.admin.post(TOKENS, json={"owner": "carol", "role": "readonly",
                                        "allowed_networks": ["127.0.0.0/8"]}).json()
    assert api.admin.delete(f"{TOKENS}/{made['id']}").status_code == 204
    assert api.admin.delete(f"{TOKENS}/{made['id']}").status_code == 204  # a no-op: not recorded twice
    got = entries(api, object_type="token", object_id=made["id"])
    root = token_id_of(api.url, "root")
    assert [(e["action"], e["actor"], e["token_id"], e["client"]) for e in got] == [
        ("token.create", "root", root, "127.0.0.1"), ("token.revoke", "root", root, "127.0.0.1")]
    create, revoke = got
    assert create["before"] is None
    assert create["after"] == {"id": made["id"], "owner": "carol", "role": "readonly", "created_by": "root",
                               "expires_at": None, "allowed_networks": ["127.0.0.0/8"], "revoked": False}
    assert revoke["before"] == create["after"] and revoke["after"] == {**create["after"], "revoked": True}
    raw = json.dumps(audit_rows(api.url))
    assert made["token"] not in raw and made["token"][3:] not in raw


def test_the_audit_trail_is_for_admins_only(api: Api) -> None:
    api.create()
    for client in (api.alice, api.bob):
        assert_error(client.get(AUDIT), 403, "forbidden")
    for role in ("readonly", "metrics"):
        with api.server.client(create_token(api.server.labgate.db, "alice", role=role)) as c:
            assert_error(c.get(AUDIT), 403, "forbidden")
    assert_error(api.anon.get(AUDIT), 401, "unauthorized")


def test_filters_and_pages(api: Api) -> None:
    a = api.create(name="a")
    b = api.create(api.bob, name="b", target_port=80)
    api.alice.patch(f"{FORWARDS}/{a['id']}", json={"description": "x"})
    api.bob.delete(f"{FORWARDS}/{b['id']}")
    forwards = entries(api, object_type="forward")
    assert [e["action"] for e in forwards] == ["forward.create", "forward.create", "forward.update",
                                               "forward.delete"]
    assert [e["object_id"] for e in entries(api, actor="bob")] == [b["id"], b["id"]]
    assert [e["actor"] for e in entries(api, action="forward.update")] == ["alice"]
    assert [e["action"] for e in entries(api, object_id=a["id"], object_type="forward")] == [
        "forward.create", "forward.update"]
    cut = parse_time(forwards[2]["time"])
    assert [e["id"] for e in entries(api, since=cut.isoformat(), object_type="forward")] == \
        [e["id"] for e in forwards[2:]]
    future = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    assert entries(api, since=future) == []
    # pages: count, relative next/previous links that keep the filters
    first = api.admin.get(AUDIT, params={"object_type": "forward", "limit": 3}).json()
    assert first["count"] == 4 and [e["id"] for e in first["results"]] == [e["id"] for e in forwards[:3]]
    assert first["next"].startswith(AUDIT + "?") and "object_type=forward" in first["next"]
    second = api.admin.get(first["next"]).json()
    assert [e["id"] for e in second["results"]] == [forwards[3]["id"]] and second["next"] is None
    for params in ({"since": "2026-01-01T00:00:00"}, {"action": "DROP TABLE"}, {"object_type": "machine"},
                   {"limit": 0}, {"since": "0001-01-01T00:00:00+01:00"}):  # the last: before year 1 in UTC
        assert_error(api.admin.get(AUDIT, params=params), 422, "invalid")


def test_since_is_rfc_3339_text_only(api: Api) -> None:
    """`since` is documented as an RFC 3339 time: a number is not one (pydantic's lax datetime took it as a Unix
    time, and `0.5` answered 200), nor is a time without seconds or with a space for its "T"."""
    api.create(name="a")
    for bad in ("0.5", "1700000000", "-1", "2026-01-01 00:00:00Z", "2026-01-01T00:00Z", "2026-01-01",
                "2026-01-01T00:00:00+0100"):
        assert_error(api.admin.get(AUDIT, params={"since": bad}), 422, "invalid", "since")
    for good in ("2000-01-01T00:00:00Z", "2000-01-01t00:00:00.5z", "2000-01-01T01:00:00+01:00"):
        assert [e["action"] for e in entries(api, since=good, object_type="forward")] == ["forward.create"], good


def test_audit_events_go_to_the_sinks(database_url: str, tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    settings = make_settings(database_url)
    settings.sink = [FileSinkConfig(type="file", path=str(events_file))]
    with running_server(settings) as srv:
        root = srv.token("root", admin=True)
        with srv.client(srv.token("alice")) as alice, srv.client(root) as admin:
            fid = alice.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22}).json()["id"]
            made = admin.post(TOKENS, json={"owner": "carol"}).json()
            admin.delete(f"{TOKENS}/{made['id']}")
            # the in-memory recent events have them too (admins only)
            recent = admin.get("/api/v1/events", params={"kind": "audit"}).json()["results"]
            assert [e["fields"]["action"] for e in recent] == ["forward.create", "token.create", "token.revoke"]
            assert alice.get("/api/v1/events", params={"kind": "audit"}).json()["results"] == []
        deadline = time.monotonic() + 20
        while True:
            lines = [json.loads(line) for line in events_file.read_text().splitlines()] \
                if events_file.exists() else []
            audits = [e for e in lines if e["kind"] == "audit"]
            if len(audits) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert [(e["action"], e["object_id"], e["actor"]) for e in audits] == [
        ("forward.create", fid, "alice"), ("token.create", made["id"], "root"), ("token.revoke", made["id"], "root")]
    assert json.loads(audits[0]["after"])["target_port"] == 22 and audits[0]["before"] is None
    assert audits[0]["client"] == "127.0.0.1" and isinstance(audits[0]["audit_id"], int)
    assert made["token"] not in events_file.read_text()


def test_a_cli_token_change_is_recorded_though_the_process_ends_at_once(database_url: str, tmp_path: Path) -> None:
    """`labgate token create` is a process with no event delivery at all: it exits right after the change. The
    record is in the database anyway, because it was written in the change's own transaction."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LABGATE_DATABASE": database_url}
    done = subprocess.run([sys.executable, "-m", "labgate", "token", "create", "erin", "--role", "readonly"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    secret = done.stdout.strip()
    [row] = audit_rows(database_url)
    assert row["action"] == "token.create" and row["actor"].startswith("local:") and row["token_id"] is None
    assert json.loads(row["after"])["owner"] == "erin" and secret not in json.dumps(row)
    with api_for(database_url) as api:
        assert [e["action"] for e in entries(api, object_type="token")][0] == "token.create"
