"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from labgate.config import GatewayConfig, ServerConfig, Settings


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/labgate.db"


def make_settings(database: str, *, dataplane: str = "none", gateways: list[GatewayConfig] | None = None,
                  reconcile_interval: float = 30.0) -> Settings:
    return Settings(
        server=ServerConfig(database=database, dataplane=dataplane, reconcile_interval=reconcile_interval),
        gateway=gateways or [GatewayConfig(name="default", external_address="198.51.100.1",
                                           port_range=["4000-4100"], target_networks=["10.9.0.0/24"])],
    )
