"""`labgate agent` refuses what cannot work with the CLI's error contract (one `error:` line, one `hint:` line, exit
2), before it touches a kernel or the database. Running agents: tests/api/test_agent_roles.py (in process) and
tests/kernel/test_cluster.py (processes, PostgreSQL, real namespaces)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Cli, assert_cli_error

CONFIG = """
[server]
database = "sqlite:///{tmp}/lg.db"
data_dir = "{tmp}/data"

[[gateway]]
name = "gw1"
netns = "lgcli-nowhere"
external_address = "198.51.100.1"
port_range = "4000-4010"
target_networks = ["10.9.0.0/24"]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "labgate.toml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    return path


def test_an_unknown_gateway_is_named(cli: Cli, config: Path, tmp_path: Path) -> None:
    res = cli("agent", "--config", str(config), "--gateway", "gw1", "--gateway", "gw9")
    _, hint = assert_cli_error(res, 2, "'gw9'")
    assert "gw1" in hint
    assert not (tmp_path / "lg.db").exists(), "a refused agent opened the database"


def test_a_bad_name_is_refused(cli: Cli, config: Path) -> None:
    assert_cli_error(cli("agent", "--config", str(config), "--name", "a b;c"), 2, "'a b;c'")


def test_an_agent_without_a_dataplane_is_refused(cli: Cli, config: Path) -> None:
    assert_cli_error(cli("agent", "--config", str(config), LABGATE_DATAPLANE="none"), 2, "dataplane")
