"""The drift check's table shape over netlink (nfnetlink.table_shape, NamespaceKernel.table_shape) against nft's own
listing (kernel.parse_table_shape of `nft -j -t list table`), on the tables labgate's renderer built for a real
gateway, and after each kind of drift: a rule deleted, a chain deleted, a chain added, a same-named table of another
family, the table gone. Its cost (it never lists set elements) is measured outside the tests."""

from __future__ import annotations

import re

import pytest

from labgate.dataplane import nfnetlink
from labgate.dataplane.kernel import parse_table_shape
from labgate.lab import in_netns, netns_exec
from tests.conftest import make_settings
from tests.harness import database_url, running_server
from tests.kernel.conftest import gateway_for

pytestmark = pytest.mark.kernel


def nft(ns: str, *args: str) -> str:
    return netns_exec(ns, ["nft", *args], check=True).stdout


def listed_shape(ns: str, table: str) -> dict[str, int] | None:
    proc = netns_exec(ns, ["nft", "-j", "-t", "list", "table", "ip", table])
    return parse_table_shape(proc.stdout) if proc.returncode == 0 else None


def test_the_netlink_shape_matches_nft_through_every_kind_of_drift(lab, tmp_path):
    m1 = lab.machine_addresses[0]
    settings = make_settings(database_url(tmp_path, "lg.db"), dataplane="nft", gateways=[gateway_for(lab)],
                             reconcile_interval=3600)
    settings.server.full_resync_interval = 3600  # nothing repairs the drift made below behind the test's back
    with running_server(settings) as srv, srv.client(srv.token("alice")) as c:
        for i in range(5):
            r = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22 + i,
                                                 "allowed_sources": [lab.client_address]})
            assert r.status_code == 201, r.text
        gateway = srv.labgate.dataplane.gateways["lab"]
        kernel, shape = gateway.kernel, gateway.shape()
        ns = lab.gateway_ns

        def same(table: str) -> dict[str, int] | None:
            via_netlink = kernel.table_shape(table)
            assert via_netlink == listed_shape(ns, table) == in_netns(ns, lambda: nfnetlink.table_shape(table))
            return via_netlink

        main = same(shape.table)
        assert main and all(count >= 1 for count in main.values()), main
        assert same(shape.usage_table)
        assert gateway.check_tables() == (True, True)

        # a rule deleted
        chain = next(name for name, count in main.items() if count)
        # the chain's own handle comes first, its rules' after
        handle = re.findall(r"# handle (\d+)", nft(ns, "-a", "list", "chain", "ip", shape.table, chain))[-1]
        nft(ns, "delete", "rule", "ip", shape.table, chain, "handle", handle)
        assert same(shape.table) == {**main, chain: main[chain] - 1}
        assert gateway.check_tables() == (False, True)

        # a chain deleted, another added (with a rule)
        nft(ns, "flush", "chain", "ip", shape.table, chain)
        nft(ns, "delete", "chain", "ip", shape.table, chain)
        nft(ns, "add", "chain", "ip", shape.table, "extra")
        nft(ns, "add", "rule", "ip", shape.table, "extra", "counter")
        expected = {name: count for name, count in main.items() if name != chain} | {"extra": 1}
        assert same(shape.table) == expected

        # a table of the same name in another family is not this one
        nft(ns, "add", "table", "inet", shape.usage_table)
        nft(ns, "add", "chain", "inet", shape.usage_table, "other")
        nft(ns, "add", "rule", "inet", shape.usage_table, "other", "counter")
        assert "other" not in same(shape.usage_table)

        # the table gone
        nft(ns, "delete", "table", "ip", shape.table)
        assert same(shape.table) is None
        assert gateway.check_tables() == (False, True)
        assert same("labgate_never_made") is None

        # the next pass puts it back as rendered
        srv.labgate.dataplane.request_full_sync("lab")
        srv.labgate.dataplane.reconcile_once()
        assert same(shape.table) == main
        assert gateway.check_tables() == (True, True)
