"""End to end with real packets: client namespace -> gateway namespace (labgate's nftables) -> lab machines."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from labgate.lab import Service, TcpSession, tcp_request, udp_request
from tests.conftest import make_settings
from tests.harness import running_server, database_url
from tests.kernel.conftest import gateway_for, kernel_ids, nft_tables

pytestmark = pytest.mark.kernel

M1, M2 = 0, 1  # indexes into lab.machine_addresses


def settings_for(lab, tmp_path, **gw):
    return make_settings(database_url(tmp_path, "lg.db"), dataplane="nft", gateways=[gateway_for(lab, **gw)],
                         reconcile_interval=1.0)


@pytest.fixture
def services(lab):
    started = [
        Service.start_tcp_echo(lab.lab_ns, lab.machine_addresses[M1], 22),
        Service.start_tcp_echo(lab.lab_ns, lab.machine_addresses[M2], 22),
        Service.start_udp_echo(lab.lab_ns, lab.machine_addresses[M1], 53),
        Service.start_tcp_echo(lab.lab_ns, lab.machine_addresses[M1], 5900),
        Service.start_tcp_echo(lab.lab_ns, lab.machine_addresses[M1], 5901),
    ]
    try:
        yield started
    finally:
        for s in started:
            s.stop()


def create(c, **body):
    r = c.post("/api/v1/forwards", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def answered_by(reply: str | None) -> str | None:
    return reply.split(":", 1)[0] if reply else None


def test_tcp_and_udp_forwards_carry_traffic(lab, services, tmp_path):
    m1 = lab.machine_addresses[M1]
    with running_server(settings_for(lab, tmp_path)) as srv, srv.client(srv.token("alice")) as c:
        # Before any forward, the client cannot reach the lab at all.
        assert tcp_request(lab.client_ns, lab.external_address, 4000, "x", timeout=1) is None
        tcp = create(c, target_address=m1, target_port=22, name="centos1")
        udp = create(c, target_address=m1, target_port=53, protocol="udp", external_port=tcp["external_port"])
        assert tcp["external_port"] == udp["external_port"] == 4000  # TCP and UDP share the number
        assert answered_by(tcp_request(lab.client_ns, lab.external_address, 4000, "hello")) == m1
        assert answered_by(udp_request(lab.client_ns, lab.external_address, 4000, "hello")) == m1


def test_port_block_maps_port_by_port(lab, services, tmp_path):
    m1 = lab.machine_addresses[M1]
    with running_server(settings_for(lab, tmp_path)) as srv, srv.client(srv.token("alice")) as c:
        fwd = create(c, target_address=m1, target_port=5900, port_count=2, external_port=4050)
        assert tcp_request(lab.client_ns, lab.external_address, 4050, "a").endswith(":a")
        assert tcp_request(lab.client_ns, lab.external_address, 4051, "b").endswith(":b")
        assert fwd["port_count"] == 2


def test_delete_stops_traffic_and_cuts_an_established_session(lab, services, tmp_path):
    m1 = lab.machine_addresses[M1]
    with running_server(settings_for(lab, tmp_path)) as srv, srv.client(srv.token("alice")) as c:
        fwd = create(c, target_address=m1, target_port=22)
        session = TcpSession.open(lab.client_ns, lab.external_address, fwd["external_port"])
        try:
            assert answered_by(session.exchange("one")) == m1
            assert c.delete(f"/api/v1/forwards/{fwd['id']}").status_code == 204
            assert session.exchange("two", timeout=2) is None
        finally:
            session.close()
        assert tcp_request(lab.client_ns, lab.external_address, fwd["external_port"], "x", timeout=1) is None
        assert kernel_ids(lab.gateway_ns, "labgate_lab") == {}


def test_disable_cuts_and_enable_restores(lab, services, tmp_path):
    m1 = lab.machine_addresses[M1]
    with running_server(settings_for(lab, tmp_path)) as srv, srv.client(srv.token("alice")) as c:
        fwd = create(c, target_address=m1, target_port=22)
        port = fwd["external_port"]
        session = TcpSession.open(lab.client_ns, lab.external_address, port)
        try:
            assert answered_by(session.exchange("one")) == m1
            r = c.patch(f"/api/v1/forwards/{fwd['id']}", json={"enabled": False})
            assert r.status_code == 200 and r.json()["status"] == "disabled"
            assert session.exchange("two", timeout=2) is None
        finally:
            session.close()
        assert tcp_request(lab.client_ns, lab.external_address, port, "x", timeout=1) is None
        assert c.patch(f"/api/v1/forwards/{fwd['id']}", json={"enabled": True}).json()["status"] == "active"
        assert answered_by(tcp_request(lab.client_ns, lab.external_address, port, "x")) == m1


def test_retarget_moves_traffic_and_cuts_the_old_session(lab, services, tmp_path):
    m1, m2 = lab.machine_addresses[M1], lab.machine_addresses[M2]
    with running_server(settings_for(lab, tmp_path)) as srv, srv.client(srv.token("alice")) as c:
        fwd = create(c, target_address=m1, target_port=22)
        port = fwd["external_port"]
        session = TcpSession.open(lab.client_ns, lab.external_address, port)
        try:
            assert answered_by(session.exchange("one")) == m1
            r = c.patch(f"/api/v1/forwards/{fwd['id']}", json={"target_address": m2})
            assert r.status_code == 200 and r.json()["target_address"] == m2
            assert session.exchange("two", timeout=2) is None
        finally:
            session.close()
        assert answered_by(tcp_request(lab.client_ns, lab.external_address, port, "x")) == m2


def test_allowed_sources_admit_one_client_and_drop_another(lab, services, tmp_path):
    m1 = lab.machine_addresses[M1]
    with running_server(settings_for(lab, tmp_path)) as srv, srv.client(srv.token("alice")) as c:
        fwd = create(c, target_address=m1, target_port=22, allowed_sources=[lab.client_address])
        port = fwd["external_port"]
        assert answered_by(tcp_request(lab.client_ns, lab.external_address, port, "a", source=lab.client_address)) == m1
        assert tcp_request(lab.client_ns, lab.external_address, port, "b", source=lab.client_address2, timeout=1) is None
        # Widening the list admits the second client; emptying it admits anyone.
        r = c.patch(f"/api/v1/forwards/{fwd['id']}", json={"allowed_sources": [lab.client_address2]})
        assert r.status_code == 200
        assert tcp_request(lab.client_ns, lab.external_address, port, "a", source=lab.client_address, timeout=1) is None
        assert answered_by(tcp_request(lab.client_ns, lab.external_address, port, "b", source=lab.client_address2)) == m1
        c.patch(f"/api/v1/forwards/{fwd['id']}", json={"allowed_sources": []})
        assert answered_by(tcp_request(lab.client_ns, lab.external_address, port, "a", source=lab.client_address)) == m1


def test_masquerade_off_keeps_the_client_address(lab, tmp_path):
    m1 = lab.machine_addresses[M1]
    svc = Service.start_tcp_echo(lab.lab_ns, m1, 2222, report_peer=True)
    try:
        for masquerade, expected in ((False, lab.client_address), (True, None)):
            with running_server(settings_for(lab, tmp_path, masquerade=masquerade)) as srv, \
                    srv.client(srv.token("alice")) as c:
                fwd = create(c, target_address=m1, target_port=2222)
                reply = tcp_request(lab.client_ns, lab.external_address, fwd["external_port"], "who",
                                    source=lab.client_address)
                assert reply is not None
                peer = reply.split("peer=", 1)[1].split(":")[0]
                if expected:
                    assert peer == expected
                else:
                    assert peer != lab.client_address  # masqueraded to the gateway's lab-side address
                c.delete(f"/api/v1/forwards/{fwd['id']}")
    finally:
        svc.stop()


def test_two_gateways_in_two_namespaces_stay_isolated(lab, lab2, tmp_path):
    a, b = lab, lab2
    svc_a = Service.start_tcp_echo(a.lab_ns, a.machine_addresses[M1], 22)
    svc_b = Service.start_tcp_echo(b.lab_ns, b.machine_addresses[M1], 22)
    settings = make_settings(database_url(tmp_path, "lg.db"), dataplane="nft",
                             gateways=[gateway_for(a, "gwa"), gateway_for(b, "gwb")])
    try:
        with running_server(settings) as srv, srv.client(srv.token("alice")) as c:
            fa = create(c, gateway="gwa", target_address=a.machine_addresses[M1], target_port=22)
            fb = create(c, gateway="gwb", target_address=b.machine_addresses[M1], target_port=22)
            assert fa["external_port"] == fb["external_port"] == 4000  # separate port spaces
            assert answered_by(tcp_request(a.client_ns, a.external_address, 4000, "x")) == a.machine_addresses[M1]
            assert answered_by(tcp_request(b.client_ns, b.external_address, 4000, "x")) == b.machine_addresses[M1]
            assert nft_tables(a.gateway_ns) == ["table ip labgate_gwa", "table ip labgate_gwa_usage"]
            assert nft_tables(b.gateway_ns) == ["table ip labgate_gwb", "table ip labgate_gwb_usage"]
            # A change on one gateway leaves the other's kernel state alone.
            c.delete(f"/api/v1/forwards/{fa['id']}")
            assert tcp_request(a.client_ns, a.external_address, 4000, "x", timeout=1) is None
            assert answered_by(tcp_request(b.client_ns, b.external_address, 4000, "x")) == b.machine_addresses[M1]
            # A target in the other gateway's lab network is refused.
            r = c.post("/api/v1/forwards", json={"gateway": "gwa", "target_address": b.machine_addresses[M1],
                                                 "target_port": 22})
            assert r.status_code == 422
    finally:
        svc_a.stop()
        svc_b.stop()


def test_other_tables_are_never_touched(lab, services, tmp_path):
    foreign = "table ip other {\n chain c {\n type filter hook input priority 0; policy accept;\n tcp dport 9 counter accept\n }\n}\n"
    subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "-f", "-"], input=foreign, text=True, check=True)
    before = subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "list", "table", "ip", "other"],
                            capture_output=True, text=True, check=True).stdout
    with running_server(settings_for(lab, tmp_path)) as srv, srv.client(srv.token("alice")) as c:
        fwd = create(c, target_address=lab.machine_addresses[M1], target_port=22)
        c.patch(f"/api/v1/forwards/{fwd['id']}", json={"target_address": lab.machine_addresses[M2]})
        c.delete(f"/api/v1/forwards/{fwd['id']}")
    after = subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "list", "table", "ip", "other"],
                           capture_output=True, text=True, check=True).stdout
    assert before == after


def test_restarted_service_restores_exactly_the_committed_rules(lab, services, tmp_path):
    m1 = lab.machine_addresses[M1]
    settings = settings_for(lab, tmp_path)
    with running_server(settings) as srv, srv.client(srv.token("alice")) as c:
        kept = create(c, target_address=m1, target_port=22)
        gone = create(c, target_address=m1, target_port=22)
        c.delete(f"/api/v1/forwards/{gone['id']}")
    # The machine "reboots": the kernel loses everything.
    subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "flush", "ruleset"], check=True)
    assert kernel_ids(lab.gateway_ns, "labgate_lab") == {}
    with running_server(settings_for(lab, tmp_path)):
        assert kernel_ids(lab.gateway_ns, "labgate_lab") == {("tcp", kept["external_port"]): kept["id"]}
        assert answered_by(tcp_request(lab.client_ns, lab.external_address, kept["external_port"], "x")) == m1


def test_a_table_deleted_by_hand_comes_back_within_the_reconcile_interval(lab, services, tmp_path):
    m1 = lab.machine_addresses[M1]
    with running_server(settings_for(lab, tmp_path)) as srv, srv.client(srv.token("alice")) as c:
        fwd = create(c, target_address=m1, target_port=22)
        subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "delete", "table", "ip", "labgate_lab"],
                       check=True)
        assert tcp_request(lab.client_ns, lab.external_address, fwd["external_port"], "x", timeout=0.5) is None
        deadline = time.monotonic() + 5 * settings_for(lab, tmp_path).server.reconcile_interval + 3
        while kernel_ids(lab.gateway_ns, "labgate_lab") != {("tcp", fwd["external_port"]): fwd["id"]}:
            assert time.monotonic() < deadline, "table was not restored"
            time.sleep(0.2)
        assert answered_by(tcp_request(lab.client_ns, lab.external_address, fwd["external_port"], "x")) == m1
        # A flushed chain (rules gone, maps kept) is drift too.
        subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "flush", "chain", "ip", "labgate_lab",
                        "prerouting"], check=True)
        deadline = time.monotonic() + 8
        while tcp_request(lab.client_ns, lab.external_address, fwd["external_port"], "x", timeout=0.5) is None:
            assert time.monotonic() < deadline, "flushed chain was not restored"
        gw = c.get("/api/v1/gateways").json()[0]
        assert gw["status"] == "ok"


def test_change_on_a_dirty_gateway_repairs_it_in_the_same_step(lab, services, tmp_path):
    """A create while the table is missing re-renders the whole table (with the new forward) before answering."""
    m1 = lab.machine_addresses[M1]
    settings = settings_for(lab, tmp_path)
    settings.server.reconcile_interval = 3600  # no help from the loop
    with running_server(settings) as srv, srv.client(srv.token("alice")) as c:
        first = create(c, target_address=m1, target_port=22)
        subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "delete", "table", "ip", "labgate_lab"],
                       check=True)
        second = create(c, target_address=m1, target_port=22)
        assert kernel_ids(lab.gateway_ns, "labgate_lab") == {("tcp", first["external_port"]): first["id"],
                                                             ("tcp", second["external_port"]): second["id"]}


def test_kernel_refusal_is_a_503_and_leaves_nothing_behind(lab, tmp_path):
    """A gateway whose namespace does not exist: the change cannot reach a kernel, so nothing is recorded."""
    settings = make_settings(database_url(tmp_path, "lg.db"), dataplane="nft", gateways=[
        gateway_for(lab, "missing", netns=lab.gateway_ns + "-nope")])
    with running_server(settings) as srv, srv.client(srv.token("alice")) as c:
        r = c.post("/api/v1/forwards", json={"target_address": lab.machine_addresses[M1], "target_port": 22})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "dataplane_unavailable"
        assert "does not exist" in r.json()["error"]["message"]
        assert c.get("/api/v1/forwards").json()["count"] == 0
        gw = c.get("/api/v1/gateways").json()[0]
        assert gw["status"] == "error" and gw["ports_free"]["tcp"] == 101


def test_concurrent_creates_exactly_fill_the_range_with_no_orphan_rules(lab, tmp_path):
    with running_server(settings_for(lab, tmp_path)) as srv:
        token = srv.token("alice")

        def one(i: int) -> int:
            with srv.client(token) as c:
                return c.post("/api/v1/forwards", json={"target_address": lab.machine_addresses[M1],
                                                        "target_port": 1 + i}).status_code

        with ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(one, range(200)))
        assert codes.count(201) == 101 and codes.count(409) == 99
        with srv.client(token) as c:
            rows = c.get("/api/v1/forwards", params={"limit": 1000}).json()["results"]
        expected = {("tcp", f["external_port"]): f["id"] for f in rows}
        assert len(expected) == 101
        assert kernel_ids(lab.gateway_ns, "labgate_lab") == expected


def test_an_element_deleted_by_hand_comes_back_at_the_periodic_full_render(lab, services, tmp_path):
    m1 = lab.machine_addresses[M1]
    settings = settings_for(lab, tmp_path)
    settings.server.full_resync_interval = 2.0
    with running_server(settings) as srv, srv.client(srv.token("alice")) as c:
        fwd = create(c, target_address=m1, target_port=22)
        port = fwd["external_port"]
        subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "nft", "delete", "element", "ip", "labgate_lab", "ids",
                        f"{{ {lab.external_address} . tcp . {port} }}"], check=True)
        assert kernel_ids(lab.gateway_ns, "labgate_lab") == {}
        deadline = time.monotonic() + 10
        while kernel_ids(lab.gateway_ns, "labgate_lab") != {("tcp", port): fwd["id"]}:
            assert time.monotonic() < deadline, "the deleted element was not restored"
            time.sleep(0.2)
        assert answered_by(tcp_request(lab.client_ns, lab.external_address, port, "x")) == m1
