"""Failed logins are limited per client address: after `failed_login_limit` refused tokens (bearer or vLab JWT) in
`failed_login_window` seconds, that address's requests carrying a token get 429 with Retry-After, unchecked, until
the window ends; other addresses are not affected, successes do not count, X-Forwarded-For changes nothing.

Against a real server (tests/harness.py); the clients take distinct loopback source addresses (127.0.0.2, ...) so
that each test's addresses are its own. The window's end is shown once on a real server (a 1 s window, polled) and
exactly with FailedLogins' own clock."""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import jwt
import pytest

from labgate.api.middleware import FailedLogins, address_key
from labgate.config import Settings
from tests.api.conftest import FORWARDS, assert_error, gw
from tests.api.test_compat import Keys, claims, compat_settings, hs_compat, keys, rsa_pair  # noqa: F401 - fixtures
from tests.conftest import make_settings
from tests.harness import Server, running_server

WINDOW = 600.0  # long enough never to end during a test that does not wait for it
WRONG = "lg_not-a-token-of-this-server"
WAIT = 60  # seconds: the bound on waiting for something that must happen (never asserted as a duration)


@contextmanager
def server_for(settings: Settings, limit: int = 3, window: float = WINDOW) -> Iterator[Server]:
    settings.server.failed_login_limit = limit
    settings.server.failed_login_window = window
    with running_server(settings) as srv:
        yield srv


def from_address(srv: Server, address: str, headers: dict[str, str] | None = None) -> httpx.Client:
    """A client whose connections come from `address` (any 127.x.y.z reaches the server on 127.0.0.1)."""
    return httpx.Client(base_url=srv.url, timeout=30, headers=headers or {},
                        transport=httpx.HTTPTransport(local_address=address))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_blocked(resp: httpx.Response, window: float = WINDOW) -> str:
    err = assert_error(resp, 429, "too_many_failures")
    assert 0 < int(resp.headers["retry-after"]) <= window, resp.headers
    assert "too many failed logins" in err["message"] and "retry after" in err["message"], err
    return err["message"]


def test_an_address_with_too_many_refused_tokens_is_refused_unchecked(database_url: str) -> None:
    with server_for(make_settings(database_url)) as srv, ExitStack() as stack:
        alice = srv.token("alice")
        metrics = srv.token("scraper")
        guesser = stack.enter_context(from_address(srv, "127.0.0.2"))
        neighbour = stack.enter_context(from_address(srv, "127.0.0.3"))

        for _ in range(3):
            assert_error(guesser.get(FORWARDS, headers=bearer(WRONG)), 401, "unauthorized")
        message = assert_blocked(guesser.get(FORWARDS, headers=bearer(WRONG)))
        assert "127.0.0.2" in message
        # Now even a good token is refused without being looked at, on every path that takes one; forging the
        # address changes nothing (the client address is the TCP peer).
        assert_blocked(guesser.get(FORWARDS, headers=bearer(alice)))
        assert_blocked(guesser.post(FORWARDS, headers=bearer(alice), json={"target_address": "10.9.0.5",
                                                                           "target_port": 22}))
        assert_blocked(guesser.get(FORWARDS, headers={**bearer(alice), "X-Forwarded-For": "203.0.113.9"}))
        assert_blocked(guesser.get("/metrics", headers=bearer(metrics)))
        # What needs no token still works, and a request without one is the usual 401 (it guesses nothing).
        assert guesser.get("/healthz").status_code == 200
        assert_error(guesser.get(FORWARDS), 401, "unauthorized")
        # Another address is not affected, and has its own count.
        assert neighbour.get(FORWARDS, headers=bearer(alice)).status_code == 200
        assert_error(neighbour.get(FORWARDS, headers=bearer(WRONG)), 401, "unauthorized")
        assert neighbour.get(FORWARDS, headers=bearer(alice)).status_code == 200
        assert _forwards(srv) == []  # the refused POST did nothing


def _forwards(srv: Server) -> list[dict]:
    with from_address(srv, "127.0.0.9", bearer(srv.token("root", admin=True))) as admin:
        resp = admin.get(FORWARDS)
        assert resp.status_code == 200, resp.text
        return resp.json()["results"]


def test_successes_do_not_count_and_metrics_failures_do(database_url: str) -> None:
    with server_for(make_settings(database_url)) as srv, from_address(srv, "127.0.0.4") as c:
        alice = srv.token("alice")
        for _ in range(5):
            assert c.get(FORWARDS, headers=bearer(alice)).status_code == 200
        assert_error(c.get(FORWARDS, headers=bearer(WRONG)), 401, "unauthorized")
        assert_error(c.get("/metrics", headers=bearer(WRONG)), 401, "unauthorized")  # counted too (its route's 401)
        for _ in range(5):
            assert c.get(FORWARDS, headers=bearer(alice)).status_code == 200
        assert_error(c.get(FORWARDS, headers=bearer(WRONG)), 401, "unauthorized")  # the third failure
        assert_blocked(c.get(FORWARDS, headers=bearer(alice)))


def test_a_token_used_from_outside_its_networks_counts_as_a_failure(database_url: str) -> None:
    from labgate.core.tokens import create_token

    with server_for(make_settings(database_url), limit=2) as srv, from_address(srv, "127.0.0.5") as c:
        bound = create_token(srv.labgate.db, "alice", allowed_networks=["203.0.113.0/24"])
        for _ in range(2):
            assert_error(c.get(FORWARDS, headers=bearer(bound)), 401, "unauthorized")
        assert_blocked(c.get(FORWARDS, headers=bearer(srv.token("alice"))))


def test_the_block_ends_with_the_window(database_url: str) -> None:
    with server_for(make_settings(database_url), limit=1, window=1.0) as srv, from_address(srv, "127.0.0.6") as c:
        alice = srv.token("alice")
        assert_error(c.get(FORWARDS, headers=bearer(WRONG)), 401, "unauthorized")
        assert_blocked(c.get(FORWARDS, headers=bearer(alice)), window=1.0)
        deadline = time.monotonic() + WAIT
        while (resp := c.get(FORWARDS, headers=bearer(alice))).status_code == 429:
            assert time.monotonic() < deadline, "the block did not end"
            time.sleep(0.05)
        assert resp.status_code == 200, resp.text
        # A new window, from zero: one more failure blocks again.
        assert_error(c.get(FORWARDS, headers=bearer(WRONG)), 401, "unauthorized")
        assert_blocked(c.get(FORWARDS, headers=bearer(alice)), window=1.0)


def test_vlab_logins_are_limited_too(database_url: str, keys: Keys) -> None:  # noqa: F811 - the fixture
    settings = compat_settings(database_url, hs_compat(keys), [gw("default", external_address="198.51.100.1")])
    with server_for(settings) as srv, from_address(srv, "127.0.0.7") as c:
        good = jwt.encode(claims("alice"), keys.hs_secret, algorithm="HS256")
        forged = jwt.encode(claims("alice"), b"x" * 64, algorithm="HS256")
        assert c.get("/api/1/ipam/portmap", headers={"X-Auth": good}).status_code == 200
        for _ in range(3):
            resp = c.get("/api/1/ipam/portmap", headers={"X-Auth": forged})
            assert resp.status_code == 401, resp.text
        resp = c.get("/api/1/ipam/portmap", params={"name": "vm1"}, headers={"X-Auth": good})
        assert resp.status_code == 429, resp.text
        assert 0 < int(resp.headers["retry-after"]) <= WINDOW
        body = resp.json()  # the vLab envelope, as every other answer of /api/1
        assert body["content"] == {} and body["params"] == {"name": "vm1"}
        assert body["error"].startswith("too many failed logins from 127.0.0.7")
        assert c.get("/api/1/ipam/healthcheck").status_code == 200
        # And it is documented so (the envelope's schema), where a client generated from /openapi.json looks.
        documented = c.get("/openapi.json").json()["paths"]["/api/1/ipam/portmap"]["get"]["responses"]["429"]
        assert documented["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/VlabFailed"}
        # The same address is refused on /api/v1 too: it is the address that guessed.
        assert_blocked(c.get(FORWARDS, headers=bearer(srv.token("alice"))))


def test_zero_turns_it_off(database_url: str) -> None:
    with server_for(make_settings(database_url), limit=0) as srv, from_address(srv, "127.0.0.8") as c:
        for _ in range(30):
            assert_error(c.get(FORWARDS, headers=bearer(WRONG)), 401, "unauthorized")
        assert c.get(FORWARDS, headers=bearer(srv.token("alice"))).status_code == 200


# --- the counter itself, on its own clock ------------------------------------------------------------------------

def test_failed_logins_windows() -> None:
    f = FailedLogins(limit=2, window=60.0)
    f.failed("a", now=0.0)
    assert f.retry_after("a", now=1.0) == 0.0
    f.failed("a", now=10.0)
    assert f.retry_after("a", now=10.0) == 50.0  # blocked until the window that opened at 0 ends
    assert f.retry_after("b", now=10.0) == 0.0
    assert f.retry_after("a", now=59.5) == 0.5
    assert f.retry_after("a", now=60.0) == 0.0  # the window ended
    f.failed("a", now=61.0)  # a new window from zero
    assert f.retry_after("a", now=61.0) == 0.0
    f.failed("a", now=62.0)
    assert f.retry_after("a", now=62.0) == 59.0


def test_failed_logins_memory_is_bounded() -> None:
    f = FailedLogins(limit=1, window=60.0, max_addresses=3)
    for i in range(10):
        f.failed(f"10.0.0.{i}", now=float(i))
    assert len(f) == 3 and f.retry_after("10.0.0.9", now=9.0) > 0 and f.retry_after("10.0.0.0", now=9.0) == 0.0
    f.failed("10.0.1.1", now=100.0)  # every older window has ended: dropped
    assert len(f) == 1


@pytest.mark.parametrize("host, key", [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("fe80::1%eth0", "fe80::/64"),
    (None, "?"),
])
def test_address_key(host: str | None, key: str) -> None:
    assert address_key(host) == key


def test_the_settings_have_defaults() -> None:
    cfg = make_settings("sqlite:///" + str(Path("/nonexistent/labgate.db"))).server
    assert (cfg.failed_login_limit, cfg.failed_login_window) == (20, 60.0)
