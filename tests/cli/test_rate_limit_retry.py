"""The SDK (and so the CLI) against a server that rate limits: a 429 is retried after the server's Retry-After, a
bounded number of times and for a bounded total wait, POST included (a 429 is refused before anything is done),
and giving up says so clearly. Against a real labgate server with a tiny rate limit (tests/harness.py), and, for the
bound on attempts, a real local HTTP server that answers nothing but 429 "Retry-After: 0" (labgate never asks for
less than 1 s)."""

from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from labgate.client import Client, RateLimited
from labgate.client.api import retry_after_seconds
from tests.cli.conftest import Cli, assert_cli_error
from tests.conftest import make_settings
from tests.harness import Server, running_server, database_url

FORWARDS = "/api/v1/forwards"


@contextmanager
def limited_server(tmp_path: Path, rate: float, burst: int) -> Iterator[Server]:
    settings = make_settings(database_url(tmp_path, "labgate.db"))
    settings.server.rate_limit = rate
    settings.server.rate_limit_burst = burst
    with running_server(settings) as srv:
        yield srv


def forwards_of(srv: Server, owner: str) -> list[dict]:
    """Read with an admin token (its own bucket), not through the SDK under test."""
    with srv.client(srv.token("root", admin=True)) as admin:
        resp = admin.get(FORWARDS, params={"owner": owner, "limit": 1000})
        assert resp.status_code == 200, resp.text
        return resp.json()["results"]


def test_a_429_is_waited_out_and_the_post_goes_through_once(tmp_path: Path) -> None:
    # One request a second, bursts of one: the second request, sent at once, is refused with Retry-After: 1; one
    # second later the bucket holds a request again.
    with limited_server(tmp_path, rate=1, burst=1) as srv:
        waits: list[tuple[float, str | None]] = []
        with Client(srv.url, srv.token("alice"), on_retry=lambda s, e: waits.append((s, e.code))) as c:
            first = c.create_forward("10.9.0.5", 22, name="one")
            second = c.create_forward("10.9.0.5", 23, name="two")
        assert waits and waits[0] == (1.0, "rate_limited"), waits  # it was refused, and waited what it was told
        assert len(waits) < 4
        stored = forwards_of(srv, "alice")
        assert sorted((f["id"], f["name"]) for f in stored) == [(first.id, "one"), (second.id, "two")]


def test_a_wait_longer_than_the_clients_limit_is_not_waited_and_says_why(tmp_path: Path) -> None:
    # 0.001 a second: once the burst is used, the server asks for 1000 s, beyond the client's 30 s.
    with limited_server(tmp_path, rate=0.001, burst=1) as srv:
        waits: list[float] = []
        with Client(srv.url, srv.token("alice"), on_retry=lambda s, e: waits.append(s)) as c:
            c.list_gateways()
            with pytest.raises(RateLimited) as caught:
                c.create_forward("10.9.0.5", 22, name="one")
        err = caught.value
        assert waits == []
        assert (err.status, err.code, err.exit_code) == (429, "rate_limited", 6)
        assert err.retry_after is not None and 900 < err.retry_after <= 1000  # what the server asked
        assert "too many requests" in err.message
        assert "gave up after 1 attempt" in err.message and "30 s limit" in err.message, err.message
        assert err.hint == f"nothing was changed; try again in {err.retry_after:.0f} s"
        assert forwards_of(srv, "alice") == []


class _AlwaysBusy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.requests += 1  # type: ignore[attr-defined]
        body = json.dumps({"error": {"code": "rate_limited", "message": "busy", "field": None}}).encode()
        self.send_response(429)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def always_busy() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysBusy)
    srv.lock, srv.requests = threading.Lock(), 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def test_attempts_are_bounded() -> None:
    with always_busy() as srv:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        with Client(url, "lg_x", max_attempts=3) as c, pytest.raises(RateLimited) as caught:
            c.list_gateways()
        assert srv.requests == 3  # type: ignore[attr-defined]
        assert "gave up after 3 attempts: no attempt left" in caught.value.message
        with Client(url, "lg_x") as c, pytest.raises(RateLimited):
            c.list_gateways()
        assert srv.requests == 3 + 4  # type: ignore[attr-defined]  # the default: 4 attempts


def test_retry_after_forms() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    date = format_datetime(now + timedelta(seconds=42), usegmt=True)
    assert retry_after_seconds(date, now=now.timestamp()) == 42.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=5), usegmt=True), now=now.timestamp()) == 0.0


# --- the CLI -------------------------------------------------------------------------------------------------------

def test_cli_waits_out_429s_and_applies_each_forward_once(cli: Cli, tmp_path: Path) -> None:
    # `forward apply` is one POST; two of them back to back with one request a second: the second is refused at
    # first and must be sent again (a POST: safe, the 429 did nothing), and applies once.
    path = tmp_path / "forwards.yaml"
    path.write_text("forwards:\n  - {name: one, target_address: 10.9.0.5, target_port: 22}\n")
    with limited_server(tmp_path, rate=1, burst=1) as srv:
        cli.configure(srv.url, srv.token("alice"))
        first = cli("forward", "apply", "-f", str(path), "-o", "json").ok()
        res = cli("forward", "apply", "-f", str(path), "-o", "json").ok()
        assert [f["name"] for f in json.loads(res.stdout)] == ["one"]
        assert json.loads(res.stdout)[0]["id"] == json.loads(first.stdout)[0]["id"]
        notes = [line for line in res.stderr.splitlines() if line.startswith("note: ")]
        assert notes and all("too many requests" in n and "waiting 1 s before trying again" in n for n in notes), \
            res.stderr
        assert [f["name"] for f in forwards_of(srv, "alice")] == ["one"]


def test_cli_gives_up_with_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    with limited_server(tmp_path, rate=0.001, burst=1) as srv:
        cli.configure(srv.url, srv.token("alice"))
        cli("forward", "ls").ok()
        res = cli("forward", "ls")
        _, hint = assert_cli_error(res, 6, "too many requests with this token", "gave up after 1 attempt")
        seconds = int(re.fullmatch(r"nothing was changed; try again in (\d+) s", hint).group(1))
        assert 900 < seconds <= 1000  # the server's Retry-After (the bucket refills 1/1000 a second)
