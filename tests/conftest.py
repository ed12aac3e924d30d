"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from labgate.config import GatewayConfig, ServerConfig, Settings
from tests import harness


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file, whatever LG_TEST_DATABASE says: for tests about SQLite itself (mark them sqlite_only)."""
    return f"sqlite:///{tmp_path}/labgate.db"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A fresh database: a SQLite file, or with LG_TEST_DATABASE=postgresql a new PostgreSQL database."""
    return harness.database_url(tmp_path)


def pytest_sessionfinish(session, exitstatus) -> None:
    harness.stop_postgres()


def pytest_collection_modifyitems(config, items) -> None:
    """On PostgreSQL, the tests about the SQLite file are not collected (they run in the SQLite pass)."""
    if harness.TEST_DATABASE == "postgresql":
        kept = [item for item in items if item.get_closest_marker("sqlite_only") is None]
        if len(kept) != len(items):
            config.hook.pytest_deselected(items=[i for i in items if i not in kept])
            items[:] = kept


def make_settings(database: str, *, dataplane: str = "none", gateways: list[GatewayConfig] | None = None,
                  reconcile_interval: float = 30.0) -> Settings:
    return Settings(
        server=ServerConfig(database=database, dataplane=dataplane, reconcile_interval=reconcile_interval),
        gateway=gateways or [GatewayConfig(name="default", external_address="198.51.100.1",
                                           port_range=["4000-4100"], target_networks=["10.9.0.0/24"])],
    )
