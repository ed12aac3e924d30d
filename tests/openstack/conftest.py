"""The `neutron` fixture: one real Neutron API (tests/openstack/neutron_api.py) for the whole test session.

The first run builds .venv-neutron (about 100 s) and says so on the terminal; every run then spends about 20-30 s
creating the schema and starting the API. When the venv cannot be built, the tests that use the fixture skip, and
fail in CI (CI=true). A failed test that uses it gets the end of the Neutron log in its report."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness import require
from tests.openstack.neutron_api import NeutronServer, VenvError, ensure_venv

log = logging.getLogger("tests.openstack")
SERVER = pytest.StashKey[NeutronServer]()
# The test that starts the session's server also pays for the venv build (~100 s, more on a busy machine) and the
# start (~25 s): pytest-timeout counts fixture setup, so these tests get more than the suite's default.
SETUP_TIMEOUT = 900


def _say(config: pytest.Config, message: str) -> None:
    """Show a line on the terminal now, even while pytest captures output (a build of minutes needs saying)."""
    log.info(message)
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    with capman.global_and_fixture_disabled() if capman else nullcontext():
        if reporter is not None:
            reporter.write_line(f"[neutron] {message}")
        else:
            print(f"[neutron] {message}", flush=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if (item.path.is_relative_to(here) and "neutron" in getattr(item, "fixturenames", ())
                and item.get_closest_marker("timeout") is None):
            item.add_marker(pytest.mark.timeout(SETUP_TIMEOUT))


@pytest.fixture(scope="session")
def neutron(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NeutronServer]:
    """A running Neutron API: `.endpoint`, `.clouds_yaml` (cloud `.cloud`), `.log_path`; openstacksdk Connections
    `.admin()`, `.project(id)`, `.nova(id)`; `.external_network()`, `.project_topology()`, `.vm_port()`,
    `.delete_vm()`. Stopped at the end of the session."""
    say = lambda message: _say(request.config, message)  # noqa: E731
    t0 = time.monotonic()
    try:
        python = ensure_venv(say)
    except VenvError as exc:
        require(False, f"the Neutron venv could not be built: {exc}")
    server = NeutronServer(tmp_path_factory.mktemp("neutron"), python)
    server.timings["venv"] = time.monotonic() - t0
    say("starting the Neutron API (schema, then the server: about 25 s)")
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    server.timings["total"] = time.monotonic() - t0
    say(f"Neutron API at {server.endpoint} (venv {server.timings['venv']:.1f} s, schema "
        f"{server.timings['schema']:.1f} s, server {server.timings['serve']:.1f} s)")
    request.config.stash[SERVER] = server
    try:
        yield server
    finally:
        server.stop()
        del request.config.stash[SERVER]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "neutron" in getattr(item, "fixturenames", ()):
        server = item.config.stash.get(SERVER, None)
        if server is not None:
            report.sections.append((f"Neutron log (end of {server.log_path})", server.log_tail(60)))
