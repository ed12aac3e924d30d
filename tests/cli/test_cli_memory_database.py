"""An in-memory SQLite database (`LABGATE_DATABASE=sqlite:///:memory:`) is refused by the server-side commands
with the CLI's error contract (one `error:` line saying why, one `hint:` line saying to use a file, exit 2), never
a traceback: every process would get an empty database of its own, so `labgate serve` could never see the tokens
`labgate token create` stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Cli, assert_cli_error
from tests.harness import free_port

IN_MEMORY = ["sqlite:///:memory:", "sqlite://"]


@pytest.mark.parametrize("url", IN_MEMORY)
def test_token_create_refuses_an_in_memory_database(cli: Cli, tmp_path: Path, url: str) -> None:
    data = tmp_path / "data"
    res = cli("token", "create", "admin", "--admin", LABGATE_DATABASE=url, LABGATE_DATA_DIR=str(data))
    _, hint = assert_cli_error(res, 2, "in memory", url)
    assert "sqlite:///" in hint and "file" in hint, hint
    assert not data.exists(), "a refused command created the data directory"


def test_serve_refuses_an_in_memory_database(cli: Cli, tmp_path: Path) -> None:
    # Were it accepted, serve would keep running: the subprocess's timeout then fails the test.
    res = cli("serve", "--listen", f"127.0.0.1:{free_port()}", LABGATE_DATABASE=IN_MEMORY[0],
              LABGATE_DATA_DIR=str(tmp_path / "data"), LABGATE_DATAPLANE="none", timeout=60)
    assert_cli_error(res, 2, "in memory", "token create")
