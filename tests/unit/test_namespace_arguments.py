"""Arguments refused before any network namespace is touched: the lab builder's (labgate.lab) and a probe of a
namespace that does not exist (never a probe of this process's own namespace instead). No root needed; what these
functions do with good arguments is tested as root in tests/kernel/test_lab.py and tests/kernel/test_probe.py."""

from __future__ import annotations

import os

import pytest

from labgate.dataplane.netns import NamespaceError
from labgate.lab import create_lab, netns_exec
from labgate.workers.probe import probe_in_namespace


def namespaces() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def test_invalid_arguments_build_nothing():
    before = namespaces()
    for bad in ("", "-x", "with space", "x" * 12, "a/b"):
        with pytest.raises(ValueError):
            create_lab(bad)
    with pytest.raises(ValueError):
        create_lab("lgtargs", subnet_index=200)
    with pytest.raises(TypeError):
        netns_exec("whatever", "ls -l")  # type: ignore[arg-type]
    assert namespaces() == before


def test_missing_namespace_raises():
    with pytest.raises(NamespaceError):
        probe_in_namespace("lgp-no-such-ns", ["10.9.0.5"])
