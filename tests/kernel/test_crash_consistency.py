"""Promises that must survive a crash at the wrong moment (issue 11, item 6), with real conntrack and real
traffic: a forward deleted in the database while its session was never cut is cut when labgate starts again."""

from __future__ import annotations


import pytest

from labgate.lab import Service, TcpSession
from tests.conftest import make_settings
from tests.harness import RawConnection, database_url, running_server
from tests.kernel.conftest import gateway_for

pytestmark = pytest.mark.kernel


def test_a_session_whose_cut_was_lost_is_cut_at_the_next_start(lab, tmp_path):
    m1 = lab.machine_addresses[0]
    db = database_url(tmp_path)
    settings = lambda: make_settings(db, dataplane="nft", gateways=[gateway_for(lab)])  # noqa: E731
    with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"):
        with running_server(settings()) as srv, srv.client(srv.token("alice")) as c:
            kept = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22}).json()
            lost = c.post("/api/v1/forwards", json={"target_address": m1, "target_port": 22}).json()
        # Both sessions outlive the server (a restart keeps the kernel's state).
        with TcpSession.open(lab.client_ns, lab.external_address, kept["external_port"]) as keep, \
                TcpSession.open(lab.client_ns, lab.external_address, lost["external_port"]) as gone:
            assert keep.exchange("a") == "vm1:a" and gone.exchange("b") == "vm1:b"
            # The delete of `lost` committed, and the process died before it cut the session.
            con = RawConnection(db)
            with con:
                con.execute("DELETE FROM port_allocations WHERE forward_id = ?", (lost["id"],))
                con.execute("DELETE FROM forwards WHERE id = ?", (lost["id"],))
            con.close()
            assert gone.exchange("still?") == "vm1:still?"  # the kernel still translates it: the broken promise
            with running_server(settings()):
                # The start's full sync removed the element and cut what the database no longer explains.
                assert gone.exchange("after") is None
                assert keep.exchange("c") == "vm1:c"  # a forward that still exists keeps its session
