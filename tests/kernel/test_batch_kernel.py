"""Batches against the real kernel: forwards made in one request carry traffic at once, and a batch delete of many
forwards cuts the open sessions of exactly those (one conntrack listing for the lot, not one call per forward)."""

from __future__ import annotations

import pytest

from labgate.lab import Service, TcpSession, tcp_request
from tests.conftest import make_settings
from tests.harness import database_url, running_server
from tests.kernel.conftest import gateway_for, kernel_ids

pytestmark = pytest.mark.kernel


def test_a_batch_is_live_at_once_and_its_delete_cuts_exactly_its_sessions(lab, tmp_path):
    m1 = lab.machine_addresses[0]
    settings = make_settings(database_url(tmp_path), dataplane="nft", gateways=[gateway_for(lab)])
    with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"), running_server(settings) as srv, \
            srv.client(srv.token("alice")) as c:
        kept = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22, "name": "kept"}).json()
        r = c.post("/api/v1/forwards/batch", json={"create": [
            {"target_address": m1, "target_port": 22, "name": f"b{i}"} for i in range(12)]})
        assert r.status_code == 201, r.text
        made = r.json()["forwards"]
        assert kernel_ids(lab.gateway_ns, "labgate_lab") == {("tcp", f["external_port"]): f["id"]
                                                              for f in [kept, *made]}
        assert all(tcp_request(lab.client_ns, lab.external_address, f["external_port"], "hi") == "vm1:hi"
                   for f in made)
        with TcpSession.open(lab.client_ns, lab.external_address, made[3]["external_port"]) as s3, \
                TcpSession.open(lab.client_ns, lab.external_address, made[9]["external_port"]) as s9, \
                TcpSession.open(lab.client_ns, lab.external_address, kept["external_port"]) as sk:
            assert s3.exchange("a") == "vm1:a" and s9.exchange("b") == "vm1:b" and sk.exchange("c") == "vm1:c"
            r = c.post("/api/v1/forwards/batch", json={"delete": [f["id"] for f in made]})
            assert r.status_code == 201 and len(r.json()["deleted"]) == 12, r.text
            assert s3.exchange("after") is None and s9.exchange("after") is None  # cut
            assert sk.exchange("still") == "vm1:still"  # not in the batch: untouched
        assert kernel_ids(lab.gateway_ns, "labgate_lab") == {("tcp", kept["external_port"]): kept["id"]}
