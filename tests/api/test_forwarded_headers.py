"""A client cannot choose the address labgate sees: X-Forwarded-For / -Proto from a loopback client are not trusted
(uvicorn trusts them from 127.0.0.1 by default), so allowed_networks and the audit trail see the real peer."""

from __future__ import annotations

from labgate.core.tokens import create_token
from tests.api.conftest import Api


def test_x_forwarded_for_does_not_choose_the_client_address(api: Api) -> None:
    token = create_token(api.server.labgate.db, "alice", allowed_networks=["203.0.113.0/24"])
    with api.server.client(token) as c:
        assert c.get("/api/v1/gateways").status_code == 401
        forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        assert c.get("/api/v1/gateways", headers=forged).status_code == 401
    resp = api.admin.get("/api/v1/gateways", headers={"X-Forwarded-Proto": "https"})
    assert "strict-transport-security" not in resp.headers  # plain HTTP stays plain HTTP
