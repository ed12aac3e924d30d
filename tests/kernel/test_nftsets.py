"""Reading a counter set over netlink (labgate.dataplane.nftsets) against the real kernel, in a namespace of its own:
the dump gives exactly what nft's own JSON listing of the set gives (thousands of elements, so the answer spans many
netlink messages, with counter values set per element), a missing table or set is ENOENT, a set of other keys is
refused, and NamespaceKernel.read_counters counts real connections through a forward."""

from __future__ import annotations

import errno
import json
import random

import pytest

from labgate.dataplane import nftsets
from labgate.dataplane.kernel import KernelError, NamespaceKernel
from labgate.lab import Service, in_netns, netns_exec, tcp_request
from tests.conftest import make_settings
from tests.harness import database_url, running_server
from tests.kernel.conftest import gateway_for

pytestmark = pytest.mark.kernel



def nft(ns: str, text: str) -> str:
    proc = netns_exec(ns, ["nft", "-f", "-"], input=text)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def nft_listing(ns: str, table: str, name: str) -> dict[int, tuple[int, int]]:
    """What `nft -j list set` says: the reference the netlink reader must match."""
    proc = netns_exec(ns, ["nft", "-j", "list", "set", "ip", table, name])
    assert proc.returncode == 0, proc.stderr
    out: dict[int, tuple[int, int]] = {}
    for item in json.loads(proc.stdout)["nftables"]:
        for elem in (item.get("set") or {}).get("elem", []):
            inner = elem["elem"]
            counter = inner.get("counter") or {}
            out[inner["val"]] = (counter.get("packets", 0), counter.get("bytes", 0))
    return out


def test_a_dump_of_thousands_of_elements_matches_nfts_listing(netns):
    rng = random.Random(7)
    marks = rng.sample(range(1, 2**32), 6000)
    counts = {m: (rng.randrange(0, 2**40), rng.randrange(0, 2**62)) for m in marks[:3000]}
    nft(netns, "table ip lgt {\n set conns { type mark; counter; }\n set other { type mark; counter; }\n}\n")
    # Half the elements with counters set, half at zero; in chunks to keep each command small.
    for i in range(0, 3000, 500):
        items = ", ".join(f"{m} counter packets {p} bytes {b}" for m, (p, b) in list(counts.items())[i:i + 500])
        nft(netns, f"add element ip lgt conns {{ {items} }}\n")
    for i in range(3000, 6000, 1000):
        nft(netns, f"add element ip lgt conns {{ {', '.join(map(str, marks[i:i + 1000]))} }}\n")
    nft(netns, "add element ip lgt other { 5 counter packets 1 bytes 2 }\n")

    got = in_netns(netns, lambda: nftsets.read_counter_set("lgt", "conns"))
    assert len(got) == 6000
    assert got == nft_listing(netns, "lgt", "conns")
    assert all(got[m] == counts[m] for m in marks[:3000])
    assert all(got[m] == (0, 0) for m in marks[3000:])
    assert in_netns(netns, lambda: nftsets.read_counter_set("lgt", "other")) == {5: (1, 2)}
    # Only the elements that counted something, when asked (idle forwards cost no object).
    busy = in_netns(netns, lambda: nftsets.read_counter_set("lgt", "conns", nonzero=True))
    assert busy == {m: c for m, c in got.items() if c != (0, 0)} and 0 < len(busy) <= 3000


def test_an_empty_set_is_empty_and_missing_ones_are_enoent(netns):
    nft(netns, "table ip lgt {\n set conns { type mark; counter; }\n}\n")
    assert in_netns(netns, lambda: nftsets.read_counter_set("lgt", "conns")) == {}
    for table, name in (("lgt", "absent"), ("absent", "conns")):
        with pytest.raises(OSError) as info:
            in_netns(netns, lambda: nftsets.read_counter_set(table, name))
        assert info.value.errno == errno.ENOENT, info.value
        assert name in str(info.value) and "Errno" not in str(info.value)


def test_a_set_whose_keys_are_not_marks_is_refused(netns):
    nft(netns, "table ip lgt {\n set pairs { type inet_service . ipv4_addr; counter; "
               "elements = { 22 . 10.0.0.1 } }\n}\n")
    with pytest.raises(ValueError, match="not a set of marks"):
        in_netns(netns, lambda: nftsets.read_counter_set("lgt", "pairs"))


def test_read_counters_counts_real_connections_and_names_a_missing_table(lab, tmp_path):
    m1 = lab.machine_addresses[0]
    settings = make_settings(database_url(tmp_path, "lg.db"), dataplane="nft", gateways=[gateway_for(lab)])
    with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"), running_server(settings) as srv, \
            srv.client(srv.token("alice")) as c:
        fwd = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22}).json()
        idle = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22}).json()
        for i in range(3):
            assert tcp_request(lab.client_ns, lab.external_address, fwd["external_port"], f"hi{i}") == f"vm1:hi{i}"
        kernel = NamespaceKernel(lab.gateway_ns)
        try:
            usage = srv.labgate.dataplane.gateways["lab"].shape().usage_table
            conns = kernel.read_counters(usage, "conns")
            assert conns[fwd["id"]][0] == 3, conns
            assert conns[idle["id"]] == (0, 0), conns
            with pytest.raises(KernelError, match="reading counters: No such file or directory"):
                kernel.read_counters("labgate_absent", "conns")
        finally:
            kernel.close()
