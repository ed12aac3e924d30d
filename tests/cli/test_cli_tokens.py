"""`labgate token create|ls|revoke` on the server (issue 11): roles, expiry, allowed networks, last use."""

from __future__ import annotations

import httpx

from labgate.core.tokens import last_used
from tests.cli.conftest import FORWARDS, Cli, Lab, assert_cli_error

COLUMNS = ["id", "owner", "role", "status", "created", "expires", "last_used", "allowed_from", "created_by"]


def token_ls(cli: Cli, db: str) -> dict[str, dict[str, str]]:
    """`token ls`: its header (on stderr) names the tab-separated columns of stdout; rows by id."""
    res = cli("token", "ls", LABGATE_DATABASE=db).ok()
    header = res.stderr.strip().splitlines()[-1].split("\t")
    assert header == COLUMNS
    rows = [dict(zip(header, line.split("\t"))) for line in res.stdout.strip().splitlines()]
    return {r["id"]: r for r in rows}


def create(cli: Cli, db: str, *args: str) -> tuple[str, str]:
    res = cli("token", "create", *args, LABGATE_DATABASE=db).ok()
    secret = res.stdout.strip()
    assert secret.startswith("lg_") and "\n" not in secret
    token_id = res.stderr.split("token ", 1)[1].split(" ", 1)[0]
    return secret, token_id


def test_create_with_role_expiry_and_networks_then_list(cli: Cli, lab: Lab) -> None:
    db = lab.server.labgate.db.url
    secret, tid = create(cli, db, "carol", "--role", "readonly", "--expires", "2099-12-31",
                         "--allow-from", "127.0.0.1/8", "--allow-from", "10.0.0.0/8")
    row = token_ls(cli, db)[tid]
    assert {k: row[k] for k in ("owner", "role", "status", "expires", "last_used", "allowed_from")} == {
        "owner": "carol", "role": "readonly", "status": "active", "expires": "2100-01-01 00:00Z", "last_used": "-",
        "allowed_from": "127.0.0.0/8,10.0.0.0/8"}
    assert row["created_by"].startswith("local:")
    assert secret not in cli("token", "ls", LABGATE_DATABASE=db).stdout
    # the server honours the role: read yes, write no
    with httpx.Client(base_url=lab.url, headers={"Authorization": f"Bearer {secret}"}) as carol:
        assert carol.get(FORWARDS).status_code == 200
        resp = carol.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22})
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden"
    last_used.drain()
    assert token_ls(cli, db)[tid]["last_used"] != "-"


def test_admin_flag_and_durations(cli: Cli, lab: Lab) -> None:
    db = lab.server.labgate.db.url
    _, admin_id = create(cli, db, "ops", "--admin")
    _, short_id = create(cli, db, "temp", "--expires", "12h")
    rows = token_ls(cli, db)
    assert rows[admin_id]["role"] == "admin" and rows[admin_id]["expires"] == "-"
    assert rows[admin_id]["allowed_from"] == "any"
    assert rows[short_id]["role"] == "user" and rows[short_id]["expires"] != "-"


def test_bad_options_exit_2_and_store_nothing(cli: Cli, lab: Lab) -> None:
    db = lab.server.labgate.db.url
    before = token_ls(cli, db)
    for args, message in [
        (("--role", "superuser"), "role 'superuser'"),
        (("--admin", "--role", "user"), "--admin contradicts"),
        (("--expires", "2001-01-01"), "in the past"),
        (("--expires", "soon"), "not a duration"),
        (("--expires", "0d"), "future"),
        (("--allow-from", "10.0.0.0/40"), "not an IP network"),
    ]:
        assert_cli_error(cli("token", "create", "carol", *args, LABGATE_DATABASE=db), 2, message)
    assert token_ls(cli, db) == before


def test_revoke(cli: Cli, lab: Lab) -> None:
    db = lab.server.labgate.db.url
    secret, tid = create(cli, db, "carol")
    res = cli("token", "revoke", tid, LABGATE_DATABASE=db).ok()
    assert f"token {tid} of carol revoked" in res.stderr
    assert token_ls(cli, db)[tid]["status"] == "revoked"
    with httpx.Client(base_url=lab.url, headers={"Authorization": f"Bearer {secret}"}) as carol:
        assert carol.get(FORWARDS).status_code == 401
    assert_cli_error(cli("token", "revoke", "999999", LABGATE_DATABASE=db), 3, "does not exist")
