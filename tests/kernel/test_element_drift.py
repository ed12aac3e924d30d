"""Drift the structure check cannot see (issue 11, item 10): `nft flush map ... ids` left every forward refusing
connections for 10+ minutes while /healthz said ok. The sentinel elements are asked about on every reconcile pass
(one netlink request each, no listing), so the next pass repairs it."""

from __future__ import annotations

import pytest

from labgate.lab import Service, netns_exec, tcp_request
from tests.conftest import make_settings
from tests.harness import running_server, database_url
from tests.kernel.conftest import gateway_for

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("flush", [["flush", "map", "ip", "labgate_lab", "ids"],
                                   ["flush", "map", "ip", "labgate_lab", "targets"],
                                   ["flush", "set", "ip", "labgate_lab", "restricted"]])
def test_a_flushed_set_is_repaired_by_the_next_reconcile_pass(lab, tmp_path, flush):
    m1 = lab.machine_addresses[0]
    settings = make_settings(database_url(tmp_path, "lg.db"), dataplane="nft", gateways=[gateway_for(lab)])
    settings.server.full_resync_interval = 3600  # only the cheap check may find it
    with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"), running_server(settings) as srv, \
            srv.client(srv.token("alice")) as c:
        fwd = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22,
                                                "allowed_sources": [lab.client_address]}).json()
        other = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22,
                                                  "allowed_sources": [lab.client_address2]}).json()
        assert tcp_request(lab.client_ns, lab.external_address, fwd["external_port"], "a") == "vm1:a"
        netns_exec(lab.gateway_ns, ["nft", *flush], check=True)
        repairs = srv.labgate.dataplane.gateways["lab"]
        assert repairs.check_tables()[0] is False
        assert srv.labgate.dataplane.reconcile_once() is True
        assert repairs.check_tables() == (True, True)
        assert tcp_request(lab.client_ns, lab.external_address, fwd["external_port"], "b") == "vm1:b"
        # restricted again: the other forward admits only client_address2
        assert tcp_request(lab.client_ns, lab.external_address, other["external_port"], "c", timeout=1) is None
