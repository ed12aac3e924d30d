"""Test harness: a real labgate server (uvicorn on a free loopback port, real database) in this process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import httpx

from labgate.api.app import create_app
from labgate.api.http import make_server
from labgate.config import GatewayConfig, Settings
from labgate.dataplane.fake import FakeKernel
from labgate.service import Labgate
from labgate.core.tokens import create_token

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, reason: str) -> None:
    """A service test's prerequisite: outside CI a missing one skips; in CI (CI=true) it fails, never skips."""
    import pytest

    if not ok:
        if IN_CI:
            pytest.fail(f"{reason} (CI must run these tests)", pytrace=False)
        pytest.skip(reason)


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM (a clean close, like a real restart), SIGKILL after 10 s; nothing if already gone."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    labgate: Labgate

    def kernel(self, gateway: str = "default") -> FakeKernel:
        """The in-memory kernel of a gateway (API tests)."""
        kernel = self.labgate.dataplane.gateways[gateway].kernel
        assert isinstance(kernel, FakeKernel), "this server runs a real kernel"
        return kernel

    def token(self, owner: str, admin: bool = False) -> str:
        return create_token(self.labgate.db, owner, admin=admin)

    def client(self, token: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)


def fake_kernels(settings: Settings) -> Callable[[GatewayConfig], FakeKernel]:
    """An in-memory kernel per gateway whose addresses fit its config (the 'auto' address: 192.0.2.10)."""

    def make(cfg: GatewayConfig) -> FakeKernel:
        ext = "192.0.2.10" if cfg.external_address == "auto" else cfg.external_address
        return FakeKernel(addresses=[ext, "127.0.0.1"], preferred=ext)

    return make


@contextmanager
def running_server(settings: Settings, *, api_only: bool = False) -> Iterator[Server]:
    """Start labgate on a free port; stop it (and its dataplane threads) on exit, even after a failure.

    With dataplane = "none" the gateways get the in-memory fake kernel (labgate.dataplane.fake), so API tests run
    the real sync logic without root; `api_only` keeps them without any kernel (as `serve --no-agent`)."""
    port = free_port()
    settings.server.listen = f"127.0.0.1:{port}"
    fake = settings.server.dataplane == "none" and not api_only
    lg = Labgate(settings, kernels=fake_kernels(settings) if fake else None)
    # The server `labgate serve` runs (TLS, connection bound, header/body deadlines), on this process's limits.
    server = make_server(create_app(lg), settings.server, host="127.0.0.1", port=port, log_level="warning",
                         lifespan="on")
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("labgate server did not start")
        time.sleep(0.02)
    try:
        yield Server(f"{settings.server.scheme}://127.0.0.1:{port}", lg)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
