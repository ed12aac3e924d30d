"""The same service on PostgreSQL: migrations, the API flows, and race-free allocation under concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from labgate.config import GatewayConfig
from labgate.db.models import Forward, PortAllocation
from tests.conftest import make_settings
from tests.harness import running_server
from tests.services.postgres import postgres_server


@pytest.fixture(scope="module")
def pg_url():
    with postgres_server() as url:
        yield url


def test_api_flows_on_postgres(pg_url):
    settings = make_settings(pg_url, gateways=[GatewayConfig(
        name="pg1", external_address="198.51.100.1", port_range=["4000-4009"], target_networks=["10.9.0.0/24"])])
    with running_server(settings) as srv:
        token = srv.token("alice")
        with srv.client(token) as c:
            r = c.post("/api/v1/forwards", json={"target_address": "10.9.0.5", "target_port": 22, "name": "centos1"})
            assert r.status_code == 201, r.text
            fwd = r.json()
            assert fwd["external_port"] == 4000 and fwd["created_at"].endswith("Z")
            r = c.post("/api/v1/forwards", json={"target_address": "10.9.0.5", "target_port": 22, "external_port": 4000})
            assert r.status_code == 409 and r.json()["error"]["holder"] == fwd["id"]
            r = c.patch(f"/api/v1/forwards/{fwd['id']}", json={"target_address": "10.9.0.6", "enabled": False})
            assert r.status_code == 200 and r.json()["status"] == "disabled"
            assert c.get("/api/v1/forwards", params={"name": "centos1"}).json()["count"] == 1
            assert c.delete(f"/api/v1/forwards/{fwd['id']}").status_code == 204
            assert c.get(f"/api/v1/forwards/{fwd['id']}").status_code == 404


def test_concurrent_creates_on_postgres_never_share_a_port(pg_url):
    settings = make_settings(pg_url, gateways=[GatewayConfig(
        name="pg2", external_address="198.51.100.2", port_range=["5000-5100"], target_networks=["10.9.0.0/24"])])
    with running_server(settings) as srv:
        token = srv.token("carol")

        def create(i: int) -> int:
            with srv.client(token) as c:
                return c.post("/api/v1/forwards", json={"target_address": "10.9.0.5", "target_port": 1000 + i,
                                                        "gateway": "pg2"}).status_code

        with ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(create, range(200)))
        assert codes.count(201) == 101 and codes.count(409) == 99
        with srv.labgate.db.reader() as s:
            assert s.scalar(select(func.count()).select_from(Forward).where(Forward.gateway == "pg2")) == 101
            ports = s.scalars(select(PortAllocation.port).where(PortAllocation.gateway == "pg2")).all()
        assert sorted(ports) == list(range(5000, 5101))


def test_two_api_replicas_share_one_range_without_duplicates(pg_url):
    """Two servers (separate processes' worth of state: separate port bitmaps) on one database."""
    gw = dict(name="pg3", external_address="198.51.100.3", port_range=["6000-6049"], target_networks=["10.9.0.0/24"])
    with running_server(make_settings(pg_url, gateways=[GatewayConfig(**gw)])) as a, \
            running_server(make_settings(pg_url, gateways=[GatewayConfig(**gw)])) as b:
        token = a.token("dave")

        def create(i: int) -> int:
            srv = a if i % 2 else b
            with srv.client(token) as c:
                return c.post("/api/v1/forwards", json={"target_address": "10.9.0.5", "target_port": 1 + i}).status_code

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(create, range(80)))
        assert codes.count(201) == 50 and codes.count(409) == 30, codes
        with a.labgate.db.reader() as s:
            ports = s.scalars(select(PortAllocation.port).where(PortAllocation.gateway == "pg3")).all()
        assert sorted(ports) == list(range(6000, 6050))
