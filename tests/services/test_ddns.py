"""Dynamic DNS against a real BIND 9 started here (named on loopback, TSIG keys from tsig-keygen): gateway records
that appear and follow the address (configured, and read from an interface inside a network namespace), machine
records that come and go with forwards made through the real API, a wrong key that is reported and changes
nothing, a server that is down and then up, hmac-sha512, and `labgate ddns status`.

When named is missing these tests fail under CI=true and are skipped otherwise (install: apt-get install bind9
bind9-utils bind9-dnsutils). They need no root, except the namespace test, which carries the `kernel` marker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import dns.rcode
import pytest

from labgate.config import DdnsConfig, GatewayConfig, ServerConfig, Settings
from tests.harness import Server, free_port, require, running_server, database_url
from tests.services.bind import Bind, find_named, key_secret, tsig_keygen

ZONE = "lab.test"
MZONE = "m.lab.test"


_require = require


def _require_named() -> None:
    try:
        find_named()
    except RuntimeError as exc:
        _require(False, str(exc))


@pytest.fixture(scope="module")
def bind(tmp_path_factory) -> Iterator[Bind]:
    """One named for the module: zones lab.test and m.lab.test, keys k256 (hmac-sha256) and k512 (hmac-sha512)
    that may update them, and `stranger`, a key the server knows but grants nothing. Tests use names of their own,
    so they do not see each other's records."""
    _require_named()
    server = Bind(tmp_path_factory.mktemp("named"), [ZONE, MZONE],
                  {"k256": "hmac-sha256", "k512": "hmac-sha512", "stranger": "hmac-sha256"}, grant=["k256", "k512"])
    try:
        server.start()
        yield server
    finally:
        server.stop()


def uid() -> str:
    return uuid.uuid4().hex[:8]


def wait_until(condition, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ddns(port: int, key_file: Path, **kw: Any) -> DdnsConfig:
    fast = dict(check_interval=0.1, retry_initial=0.1, retry_max=0.4, timeout=2, ttl=30, refresh=120)
    return DdnsConfig(server="127.0.0.1", port=port, zone=ZONE, key_file=str(key_file), **{**fast, **kw})


def settings(tmp_path: Path, ddns_cfg: DdnsConfig, gateways: list[GatewayConfig]) -> Settings:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return Settings(server=ServerConfig(database=database_url(tmp_path, "labgate.db"), dataplane="none"),
                    gateway=gateways, ddns=ddns_cfg)


def gateway(name: str = "default", **kw: Any) -> GatewayConfig:
    base = dict(external_address="198.51.100.1", port_range=["4000-4100"], target_networks=["10.9.0.0/24"])
    return GatewayConfig(name=name, **{**base, **kw})


@contextmanager
def served(s: Settings) -> Iterator[tuple[Server, Any]]:
    with running_server(s) as srv:
        with srv.client(srv.token("root", admin=True)) as admin:
            yield srv, admin


def gw_status(admin, name: str = "default") -> dict[str, Any]:
    resp = admin.get("/api/v1/gateways")
    assert resp.status_code == 200, resp.text
    return {g["name"]: g for g in resp.json()}[name]


def ddns_events(admin, action: str | None = None) -> list[dict[str, Any]]:
    resp = admin.get("/api/v1/events", params={"kind": "ddns", "limit": 1000})
    assert resp.status_code == 200, resp.text
    return [e["fields"] for e in resp.json()["results"] if action is None or e["fields"].get("action") == action]


# --- gateway records -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["k256", "k512"])
def test_gateway_record_appears_and_is_refreshed(bind: Bind, tmp_path: Path, key: str) -> None:
    name = f"gw-{uid()}.{ZONE}"
    cfg = ddns(bind.port, bind.keys[key].file, refresh=1.0)
    assert cfg.key_name == key and cfg.key_algorithm == bind.keys[key].algorithm  # from the BIND key file
    s = settings(tmp_path, cfg, [gateway(dns_name=name, external_address="198.51.100.7")])
    started = time.time()
    with served(s) as (srv, admin):
        wait_until(lambda: bind.query(name, "A") == ["198.51.100.7"], what="the gateway's A record")
        g = wait_until(lambda: (g := gw_status(admin))["ddns"]["address_published"] and g, what="status")
        assert g["dns_name"] == name
        d = g["ddns"]
        assert d["name"] == name and d["source"] == "config" and d["address"] == "198.51.100.7"
        assert d["address_published"] == "198.51.100.7" and d["last_error"] is None and d["failures"] == 0
        assert started <= d["last_update_at"] <= time.time()  # a Unix time, of this update
        [published] = ddns_events(admin, "published")
        assert published["name"] == name and published["address"] == "198.51.100.7" and published["previous"] is None

        # Someone deletes the record by hand: the refresh (every 1 s here) puts it back.
        assert bind.update(ZONE, key, lambda m: m.delete(name + ".", "A")) == dns.rcode.NOERROR
        deleted = bind.serial(ZONE)  # the serial after the deletion; the refresh's re-add bumps it again
        wait_until(lambda: bind.query(name, "A") == ["198.51.100.7"] and bind.serial(ZONE) > deleted, timeout=5,
                   what="the refresh")
        # A refresh is not an address change: no second "published" event.
        assert len(ddns_events(admin, "published")) == 1
        assert bind.query(name, "A")  # the TTL is the configured one
        status = admin.get("/api/v1/ddns").json()
        assert status["configured"] and status["zone"] == ZONE and status["key_name"] == key
        assert status["server"] == f"127.0.0.1:{bind.port}"
        assert key_secret(bind.keys[key].file) not in json.dumps(status) + json.dumps(gw_status(admin))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace holding a veth pair (a0, b0), removed in the end."""
    _require(os.geteuid() == 0, "needs root to create a network namespace")
    ns = f"lgdd-{uid()}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "add", "a0", "type", "veth", "peer", "name", "b0")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=10)


@pytest.mark.kernel  # creates a network namespace: root
def test_record_follows_the_address_of_an_interface_in_the_gateways_namespace(bind: Bind, tmp_path: Path,
                                                                              namespace: str) -> None:
    ns = namespace
    _ip("-n", ns, "addr", "add", "192.0.2.10/24", "dev", "a0")
    name = f"alice-{uid()}.{ZONE}"
    s = settings(tmp_path, ddns(bind.port, bind.keys["k256"].file),
                 [gateway(netns=ns, dns_name=name, ddns_interface="a0")])
    with served(s) as (srv, admin):
        wait_until(lambda: bind.query(name, "A") == ["192.0.2.10"], what="the first address")
        assert gw_status(admin)["ddns"]["source"] == "interface a0"

        # The address changes: the record follows at once (well within the 120 s refresh).
        _ip("-n", ns, "addr", "del", "192.0.2.10/24", "dev", "a0")
        _ip("-n", ns, "addr", "add", "192.0.2.20/24", "dev", "a0")
        wait_until(lambda: bind.query(name, "A") == ["192.0.2.20"], timeout=5, what="the new address")
        d = wait_until(lambda: (g := gw_status(admin)["ddns"])["address_published"] == "192.0.2.20" and g,
                       what="the status")
        assert d["address"] == "192.0.2.20" and d["last_error"] is None
        changed = [e for e in ddns_events(admin, "published") if e["address"] == "192.0.2.20"]
        assert changed and changed[0]["previous"] == "192.0.2.10" and changed[0]["gateway"] == "default"

        # No address at all: a clear error, and the name keeps its last address (no flapping to nothing).
        _ip("-n", ns, "addr", "del", "192.0.2.20/24", "dev", "a0")
        d = wait_until(lambda: (g := gw_status(admin)["ddns"])["last_error"] and g, what="the error")
        assert "a0 has no global IPv4 address" in d["last_error"] and ns in d["last_error"]
        assert bind.query(name, "A") == ["192.0.2.20"]
        assert any("no global IPv4" in (e.get("error") or "") for e in ddns_events(admin, "failed"))

        _ip("-n", ns, "addr", "add", "192.0.2.30/24", "dev", "a0")
        wait_until(lambda: bind.query(name, "A") == ["192.0.2.30"], timeout=5, what="the address after the gap")
        wait_until(lambda: gw_status(admin)["ddns"]["last_error"] is None, what="the error to clear")
        assert ddns_events(admin, "recovered")


# --- machine records -------------------------------------------------------------------------------------------------

def test_machine_records_come_and_go_with_forwards(bind: Bind, tmp_path: Path) -> None:
    gw_name = f"gw-{uid()}.{ZONE}"
    machine = f"centos-{uid()}"
    other = f"win-{uid()}"
    fqdn, other_fqdn = f"{machine}.{MZONE}", f"{other}.{MZONE}"
    s = settings(tmp_path, ddns(bind.port, bind.keys["k256"].file, machine_zone=MZONE),
                 [gateway(dns_name=gw_name), gateway("lab2", external_address="198.51.100.2",
                                                     port_range=["5000-5100"])])
    with served(s) as (srv, admin), srv.client(srv.token("alice")) as alice:
        def create(**body: Any) -> dict[str, Any]:
            body.setdefault("gateway", "default")
            resp = alice.post("/api/v1/forwards", json=body)
            assert resp.status_code == 201, resp.text
            return resp.json()

        ssh = create(name=machine, target_address="10.9.0.5", target_port=22)
        wait_until(lambda: bind.query(fqdn, "A") == ["10.9.0.5"], what="the machine's A record")
        wait_until(lambda: bind.query(fqdn, "TXT") == [f'"tcp/22 -> {gw_name}:{ssh["external_port"]}"'],
                   what="its TXT record")
        # More forwards: one TXT per forward; a block of ports; a gateway without a DNS name is named by address.
        vnc = create(name=machine, target_address="10.9.0.5", target_port=5900, port_count=2)
        dns_fwd = create(name=machine, target_address="10.9.0.5", target_port=53, protocol="udp", gateway="lab2")
        expected = sorted([
            f'"tcp/22 -> {gw_name}:{ssh["external_port"]}"',
            f'"tcp/5900-5901 -> {gw_name}:{vnc["external_port"]}-{vnc["external_port"] + 1}"',
            f'"udp/53 -> 198.51.100.2:{dns_fwd["external_port"]}"',
        ])
        wait_until(lambda: bind.query(fqdn, "TXT") == expected, what="three TXT records")
        # A second machine, and a name that cannot be a DNS label (skipped, and said so).
        win = create(name=other, target_address="10.9.0.6", target_port=3389)
        create(name="bad_name", target_address="10.9.0.7", target_port=22)
        wait_until(lambda: bind.query(other_fqdn, "A") == ["10.9.0.6"], what="the second machine")
        m = wait_until(lambda: (st := admin.get("/api/v1/ddns").json()["machines"])["pending"] == 0
                       and "bad_name" in st["skipped"] and st, what="machine status")
        assert m["zone"] == MZONE and m["names"] == m["published"] >= 2 and m["last_error"] is None
        added = {e["name"]: e for e in ddns_events(admin, "machine_added")}
        assert added[other_fqdn]["addresses"] == "10.9.0.6" and added[other_fqdn]["zone"] == MZONE

        # Disabled forwards do not forward: the machine's record goes with its last enabled one ...
        assert alice.patch(f"/api/v1/forwards/{win['id']}", json={"enabled": False}).status_code == 200
        wait_until(lambda: bind.query(other_fqdn, "A") == [], what="the disabled machine's record to go")
        assert alice.patch(f"/api/v1/forwards/{win['id']}", json={"enabled": True}).status_code == 200
        wait_until(lambda: bind.query(other_fqdn, "A") == ["10.9.0.6"], what="it to come back")
        # ... and with deletion: one TXT at a time, then the names.
        assert alice.delete(f"/api/v1/forwards/{vnc['id']}").status_code == 204
        wait_until(lambda: len(bind.query(fqdn, "TXT")) == 2, what="one TXT record less")
        assert bind.query(fqdn, "A") == ["10.9.0.5"]
        for f in (ssh, dns_fwd, win):
            assert alice.delete(f"/api/v1/forwards/{f['id']}").status_code == 204
        wait_until(lambda: bind.query(fqdn, "A") == [] and bind.query(fqdn, "TXT") == []
                   and bind.query(other_fqdn, "A") == [], what="the machines' records to go")
        removed = {e["name"] for e in ddns_events(admin, "machine_removed")}
        assert {fqdn, other_fqdn} <= removed
        assert bind.query(gw_name, "A") == ["198.51.100.1"]  # the gateway's own record is untouched


def test_machine_records_are_pushed_at_start(bind: Bind, tmp_path: Path) -> None:
    """Forwards made while DDNS was off (or the records lost) are published when the service starts."""
    machine = f"vm-{uid()}"
    base = settings(tmp_path, ddns(bind.port, bind.keys["k512"].file, machine_zone=MZONE), [gateway()])
    plain = Settings(server=base.server.model_copy(), gateway=base.gateway)
    with running_server(plain) as srv, srv.client(srv.token("alice")) as alice:
        resp = alice.post("/api/v1/forwards", json={"name": machine, "target_address": "10.9.0.9", "target_port": 22})
        assert resp.status_code == 201
        port = resp.json()["external_port"]
    assert bind.query(f"{machine}.{MZONE}", "A") == []
    with served(base) as (srv, admin):
        wait_until(lambda: bind.query(f"{machine}.{MZONE}", "A") == ["10.9.0.9"], what="the start-up push")
        assert bind.query(f"{machine}.{MZONE}", "TXT") == [f'"tcp/22 -> 198.51.100.1:{port}"']
        assert wait_until(lambda: ddns_events(admin, "machines_published"), what="the summary event")


# --- failures -------------------------------------------------------------------------------------------------------

def test_wrong_key_is_a_clear_error_and_changes_nothing(bind: Bind, tmp_path: Path) -> None:
    wrong = tsig_keygen("k256", "hmac-sha256", tmp_path / "wrong.key")  # the right name, another secret
    name = f"gw-{uid()}.{ZONE}"
    machine = f"vm-{uid()}"
    serials = {z: bind.serial(z) for z in (ZONE, MZONE)}
    s = settings(tmp_path, ddns(bind.port, wrong, machine_zone=MZONE), [gateway(dns_name=name)])
    with served(s) as (srv, admin), srv.client(srv.token("alice")) as alice:
        assert alice.post("/api/v1/forwards", json={"name": machine, "target_address": "10.9.0.5",
                                                    "target_port": 22}).status_code == 201
        d = wait_until(lambda: (g := gw_status(admin)["ddns"])["failures"] >= 2 and g, what="retried failures")
        assert "BADSIG" in d["last_error"] and "secret" in d["last_error"] and "'k256'" in d["last_error"]
        assert d["address_published"] is None and d["last_update_at"] is None and d["last_error_at"]
        assert d["next_retry_at"] is not None
        m = wait_until(lambda: (st := admin.get("/api/v1/ddns").json()["machines"])["last_error"] and st,
                       what="the machines' error")
        assert "BADSIG" in m["last_error"] and m["published"] == 0 and m["pending"] >= 1
        failed = ddns_events(admin, "failed")
        assert any(e.get("gateway") == "default" and "BADSIG" in e["error"] for e in failed)
        assert any(e.get("zone") == MZONE and "BADSIG" in e["error"] for e in failed)
        # One event per distinct error, not one per retry.
        assert len([e for e in failed if e.get("gateway") == "default"]) == 1
        # The secret (wrong or right) is nowhere in what the API says.
        text = json.dumps(admin.get("/api/v1/ddns").json()) + json.dumps(admin.get("/api/v1/gateways").json()) + \
            json.dumps(ddns_events(admin))
        assert key_secret(wrong) not in text and key_secret(bind.keys["k256"].file) not in text
        assert srv.labgate.started  # the service carries on
    assert bind.query(name, "A") == [] and bind.query(f"{machine}.{MZONE}", "A") == []
    assert {z: bind.serial(z) for z in (ZONE, MZONE)} == serials


def test_other_refusals_say_what_to_check(bind: Bind, tmp_path: Path) -> None:
    def first_error(s: Settings) -> str:
        with served(s) as (srv, admin):
            return wait_until(lambda: gw_status(admin)["ddns"]["last_error"], what="the error")

    name = f"gw-{uid()}.{ZONE}"
    serial = bind.serial(ZONE)
    # A key the server does not know.
    unknown = tsig_keygen("nokey", "hmac-sha256", tmp_path / "nokey.key")
    error = first_error(settings(tmp_path / "a", ddns(bind.port, unknown), [gateway(dns_name=name)]))
    assert "BADKEY" in error and "'nokey'" in error
    # A key the server knows, but its update-policy grants it nothing here.
    error = first_error(settings(tmp_path / "b", ddns(bind.port, bind.keys["stranger"].file), [gateway(dns_name=name)]))
    assert error.startswith("REFUSED") and "update-policy" in error and "'stranger'" in error
    # A zone the server is not authoritative for.
    other = ddns(bind.port, bind.keys["k256"].file).model_copy(update={"zone": "other.test"})
    error = first_error(settings(tmp_path / "c", other, [gateway(dns_name="gw.other.test")]))
    assert error.startswith("NOTAUTH") and "other.test" in error
    # A server that accepts the connection and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        error = first_error(settings(tmp_path / "d", ddns(silent.getsockname()[1], bind.keys["k256"].file, timeout=0.3),
                                     [gateway(dns_name=name)]))
    assert error.startswith("no answer from 127.0.0.1:") and "within 0.3 s" in error
    assert bind.query(name, "A") == [] and bind.serial(ZONE) == serial


def test_server_down_then_up_is_retried_and_published(bind: Bind, tmp_path: Path) -> None:
    port = free_port()
    later = Bind(tmp_path / "named", [ZONE], {"k256": "hmac-sha256"}, port=port)
    name = f"gw-{uid()}.{ZONE}"
    s = settings(tmp_path, ddns(port, later.keys["k256"].file), [gateway(dns_name=name)])
    try:
        with served(s) as (srv, admin):
            d = wait_until(lambda: (g := gw_status(admin)["ddns"])["failures"] >= 3 and g, what="retries")
            assert "connection refused" in d["last_error"] and f"127.0.0.1:{port}" in d["last_error"]
            [failed] = [e for e in ddns_events(admin, "failed") if e.get("gateway") == "default"]
            assert "connection refused" in failed["error"]
            later.start()
            wait_until(lambda: later.query(name, "A") == ["198.51.100.1"], timeout=10, what="the record")
            d = wait_until(lambda: (g := gw_status(admin)["ddns"])["last_error"] is None and g, what="recovery")
            assert d["failures"] == 0 and d["address_published"] == "198.51.100.1"
            [recovered] = ddns_events(admin, "recovered")
            assert "connection refused" in recovered["previous_error"] and recovered["failures"] >= 3
    finally:
        later.stop()


# --- the CLI --------------------------------------------------------------------------------------------------------

def test_cli_ddns_status(bind: Bind, tmp_path: Path) -> None:
    name = f"gw-{uid()}.{ZONE}"
    s = settings(tmp_path, ddns(bind.port, bind.keys["k256"].file, machine_zone=MZONE), [gateway(dns_name=name)])
    with served(s) as (srv, admin):
        wait_until(lambda: gw_status(admin)["ddns"]["address_published"], what="the record")
        env = {**os.environ, "LABGATE_URL": srv.url, "LABGATE_TOKEN": srv.token("alice"),
               "LABGATE_CLIENT_CONFIG": str(tmp_path / "client.toml"), "COLUMNS": "200"}

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "labgate", "ddns", "status", *args], env=env,
                                  capture_output=True, text=True, timeout=60)

        out = cli("-o", "json")
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        [g] = status["gateways"]
        assert g["gateway"] == "default" and g["name"] == name and g["address_published"] == "198.51.100.1"
        assert status["machines"]["zone"] == MZONE and status["key_algorithm"] == "hmac-sha256"
        out = cli()
        assert out.returncode == 0, out.stderr
        assert name in out.stdout and "198.51.100.1" in out.stdout and MZONE in out.stdout
        assert key_secret(bind.keys["k256"].file) not in out.stdout + json.dumps(status)
