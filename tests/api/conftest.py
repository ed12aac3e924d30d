"""API tests: a real labgate server (uvicorn on a free loopback port) over a real SQLite file, spoken to over real
HTTP with httpx. Each gateway has the in-memory kernel (labgate.dataplane.fake, given by tests/harness.py), so the
whole sync path runs while nothing here needs root or touches the real kernel."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from labgate.config import GatewayConfig
from tests.conftest import make_settings
from tests.harness import RawConnection, Server, running_server

API = "/api/v1"
FORWARDS = f"{API}/forwards"


def db_file(url: str) -> Path:
    assert url.startswith("sqlite:///")
    return Path(url[len("sqlite:///"):])


def db_rows(url: str) -> dict[str, list[tuple]]:
    """Every row of the tables the API writes, read straight from the database (not through labgate)."""
    con = RawConnection(url)
    try:
        return {
            "forwards": con.execute("SELECT * FROM forwards ORDER BY id").fetchall(),
            "port_allocations": con.execute(
                "SELECT gateway, protocol, port, forward_id FROM port_allocations ORDER BY gateway, protocol, port"
            ).fetchall(),
        }
    finally:
        con.close()


def db_count(url: str, table: str = "forwards") -> int:
    con = RawConnection(url)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


def parse_time(text: str) -> datetime:
    """An API timestamp; it must carry its time zone."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert value.tzinfo is not None, f"timestamp {text!r} has no timezone"
    return value


def assert_error(resp: httpx.Response, status: int, code: str, field: str | None = ...) -> dict[str, Any]:
    """The uniform error body: {"error": {"code", "message", "field"}}; returns the inner object."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text}"
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"], err
    assert "field" in err, err
    if field is not ...:
        assert err["field"] == field, err
    return err


@dataclass
class Api:
    """A running server plus one authenticated client per test user."""

    server: Server
    url: str  # the database URL
    alice: httpx.Client
    bob: httpx.Client
    admin: httpx.Client
    anon: httpx.Client
    tokens: dict[str, str]

    def create(self, client: httpx.Client | None = None, expect: int = 201, **body: Any) -> dict[str, Any]:
        body.setdefault("target_address", "10.9.0.5")
        body.setdefault("target_port", 22)
        resp = (client or self.alice).post(FORWARDS, json=body)
        assert resp.status_code == expect, resp.text
        return resp.json()


@contextmanager
def api_for(url: str, gateways: list[GatewayConfig] | None = None) -> Iterator[Api]:
    with ExitStack() as stack:
        srv = stack.enter_context(running_server(make_settings(url, gateways=gateways)))
        tokens = {"alice": srv.token("alice"), "bob": srv.token("bob"), "root": srv.token("root", admin=True)}
        clients = {k: stack.enter_context(srv.client(t)) for k, t in tokens.items()}
        anon = stack.enter_context(srv.client())
        yield Api(srv, url, clients["alice"], clients["bob"], clients["root"], anon, tokens)


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    """A fresh server on a fresh database (SQLite, or PostgreSQL with LG_TEST_DATABASE=postgresql): gateway
    "default", 198.51.100.1, ports 4000-4100, 10.9.0.0/24."""
    with api_for(database_url) as a:
        yield a


def gw(name: str = "default", *, external_address: str = "198.51.100.1", port_range: list[str] | None = None,
       target_networks: list[str] | None = None) -> GatewayConfig:
    return GatewayConfig(name=name, external_address=external_address, port_range=port_range or ["4000-4100"],
                         target_networks=target_networks or ["10.9.0.0/24"])
