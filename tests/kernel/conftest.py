"""Kernel tests: real nftables in namespaces these tests create and remove. They need root, nft, ip and conntrack;
when those are missing the tests fail (never skip), so a CI run cannot pass without exercising the kernel.

Every module here says `pytestmark = pytest.mark.kernel` (checked below), so `pytest -m "not kernel"` leaves them
all out and runs, as any user, every test that needs no root. A test that needs no root belongs in another folder
(tests/unit when it is pure)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid

import pytest

from labgate.config import GatewayConfig
from labgate.lab import create_lab, destroy_lab, remove_namespace

REQUIRED = ("nft", "ip", "conntrack")


@pytest.fixture(autouse=True)
def _kernel_prerequisites(request: pytest.FixtureRequest):
    if request.node.get_closest_marker("kernel") is None:
        pytest.fail(f"{request.node.nodeid} is a kernel test without the kernel marker: add "
                    "`pytestmark = pytest.mark.kernel` to its module", pytrace=False)
    missing = [b for b in REQUIRED if shutil.which(b) is None and not os.path.exists(f"/usr/sbin/{b}")]
    if os.geteuid() != 0 or missing:
        pytest.fail(f"kernel tests need root and {', '.join(REQUIRED)} (missing: {missing or 'root'}); "
                    "run `make test` as root", pytrace=False)


@pytest.fixture
def lab():
    built = create_lab("lg" + uuid.uuid4().hex[:6])
    try:
        yield built
    finally:
        destroy_lab(built)


@pytest.fixture
def lab2():
    built = create_lab("lg" + uuid.uuid4().hex[:6], subnet_index=1)
    try:
        yield built
    finally:
        destroy_lab(built)


def gateway_for(lab, name: str = "lab", **kw) -> GatewayConfig:
    args = dict(name=name, netns=lab.gateway_ns, external_address=lab.external_address, port_range=["4000-4100"],
                target_networks=[lab.lab_network], masquerade=True)
    args.update(kw)
    return GatewayConfig(**args)


_ELEM = re.compile(r"(\d+\.\d+\.\d+\.\d+) \. (tcp|udp) \. (\d+) : 0x([0-9a-f]+)")


def kernel_ids(ns: str, table: str) -> dict[tuple[str, int], int]:
    """{(protocol, external port): forward id} as the kernel has it now (empty if the table is missing)."""
    proc = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "map", "ip", table, "ids"],
                          capture_output=True, text=True)
    if proc.returncode:
        return {}
    # The sentinel element (0.0.0.0 . tcp . 0, render.SENTINELS) is in every full render and is no forward.
    return {(m.group(2), int(m.group(3))): int(m.group(4), 16) for m in _ELEM.finditer(proc.stdout)
            if m.group(1) != "0.0.0.0"}


def nft_tables(ns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True, text=True,
                         check=True).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


@pytest.fixture
def netns():
    """An empty network namespace of the test's own (removed afterwards, even on failure)."""
    name = "lgns" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)  # refuses a name that exists
    try:
        yield name
    finally:
        remove_namespace(name)
