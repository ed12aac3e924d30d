"""200 parallel creates against a 101-port range: exactly 101 win, 99 get 409 range_exhausted, no duplicates."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.api.conftest import FORWARDS, api_for, db_count, db_rows, gw

CLIENTS = 200


def test_200_parallel_creates_on_a_101_port_range(database_url: str) -> None:
    with api_for(database_url, [gw(port_range=["4000-4100"])]) as api:
        token = api.tokens["alice"]
        start = threading.Barrier(CLIENTS)

        def one(i: int) -> tuple[int, dict]:
            with httpx.Client(base_url=api.server.url, headers={"Authorization": f"Bearer {token}"},
                              timeout=60) as client:
                start.wait(timeout=60)
                resp = client.post(FORWARDS, json={"target_address": f"10.9.0.{i % 250 + 1}", "target_port": 22,
                                                   "description": f"racer {i}"})
                return resp.status_code, resp.json()

        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            results = list(pool.map(one, range(CLIENTS)))

        statuses = Counter(status for status, _ in results)
        assert statuses == {201: 101, 409: 99}, statuses
        refused = [body for status, body in results if status == 409]
        assert {b["error"]["code"] for b in refused} == {"range_exhausted"}, refused[:3]
        created = [body for status, body in results if status == 201]
        keys = [(f["protocol"], f["external_port"]) for f in created]
        assert len(set(keys)) == 101, [k for k, n in Counter(keys).items() if n > 1]
        assert sorted(p for _, p in keys) == list(range(4000, 4101))
        assert len({f["id"] for f in created}) == 101

        # the database holds exactly the winners, each with exactly its one port
        assert db_count(database_url, "forwards") == 101
        rows = db_rows(database_url)
        assert sorted((r[2], r[3]) for r in rows["port_allocations"]) == sorted(
            (f["external_port"], f["id"]) for f in created)
        listed = api.alice.get(FORWARDS, params={"limit": 1000}).json()
        assert listed["count"] == 101
        assert {f["id"] for f in listed["results"]} == {f["id"] for f in created}
        [g] = api.alice.get("/api/v1/gateways").json()
        assert g["ports_free"]["tcp"] == 0 and g["forwards"] == 101
