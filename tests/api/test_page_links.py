"""Page links (issue 11, item 9): next/previous never come from the request's Host header (a caller chooses it,
and a link built from it can point anywhere): they are relative references to this API's own path."""

from __future__ import annotations

import httpx

from tests.api.conftest import FORWARDS, Api


def test_next_and_previous_ignore_the_host_header(api: Api) -> None:
    for port in (22, 80, 443):
        api.create(target_port=port)
    resp = api.alice.get(FORWARDS, params={"limit": 1, "offset": 1, "protocol": "tcp"},
                         headers={"Host": "evil.example.com:666"})
    assert resp.status_code == 200
    page = resp.json()
    for link in (page["next"], page["previous"]):
        assert "evil.example.com" not in link
        assert link.startswith(f"{FORWARDS}?"), link
        assert httpx.URL(link).host == ""  # relative: resolved against the URL the client called
    assert httpx.URL(page["next"]).params == httpx.QueryParams({"protocol": "tcp", "limit": "1", "offset": "2"})
    assert httpx.URL(page["previous"]).params["offset"] == "0"
    # followed as given, against the server the client called
    nxt = api.alice.get(page["next"]).json()
    assert nxt["count"] == 3 and nxt["results"][0]["target_port"] == 443


def test_machines_links_are_relative_too(api: Api) -> None:
    api.create(name="m1")
    api.create(name="m2", target_port=80)
    page = api.alice.get("/api/v1/machines", params={"limit": 1}, headers={"Host": "evil.example.com"}).json()
    assert page["next"] == "/api/v1/machines?limit=1&offset=1"
