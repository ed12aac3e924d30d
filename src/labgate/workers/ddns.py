"""Dynamic DNS: keep each gateway's name, and optionally each machine's, right in DNS with RFC 2136 updates signed
with TSIG (dnspython), sent over TCP to the zone's primary server.

    ddns = DdnsUpdater(settings, db, dataplane, bus); ddns.start()
    ddns.status()              # what GET /api/v1/ddns returns (never the secret)
    ddns.gateway_status("lab") # the `ddns` object of GET /api/v1/gateways
    ddns.stop()

One thread. Every `check_interval` it reads each named gateway's address (an interface inside the gateway's
namespace, the configured address, or for "auto" the default route's) and sends `replace NAME A ADDRESS` at once
when it differs from what was last published; every `refresh` seconds it sends it again anyway. With
`machine_zone`, the records of machines are computed from the database (enabled forwards with a name) and the
difference to what was last pushed is sent; at start, and every `refresh`, everything is pushed again.

A failed update (server down, timeout, REFUSED, NOTAUTH, a TSIG error such as a wrong secret) is retried after a
backoff (retry_initial doubling to retry_max, with jitter), reported in the status with a reason that says what to
check, logged once per distinct error and published as a "ddns" event. Nothing here raises into the service.
docs/ddns.md says more.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import dns.exception
import dns.name
import dns.query
import dns.rcode
import dns.tsig
import dns.update
from prometheus_client import Counter, Gauge
from labgate.config import DdnsConfig, GatewayConfig, Settings
from labgate.dataplane.kernel import read_namespace_addresses
from labgate.dataplane.netns import NamespaceError, NamespaceWorker
from labgate.dataplane.reconcile import Dataplane
from labgate.db import queries
from labgate.db.session import Database
from labgate.events import CONTROL_CHARS, Event, Publisher
from labgate.periodic import Periodic

log = logging.getLogger("labgate.ddns")

DDNS_UPDATES = Counter("labgate_ddns_updates_total", "RFC 2136 update messages sent", ["zone", "result"])
DDNS_FAILING = Gauge("labgate_ddns_failing", "1 while the records of this target cannot be published", ["target"])

# Machine names become one DNS label: hostname rules (RFC 1123), lower case.
MACHINE_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MACHINES_PER_MESSAGE = 50  # keeps an update message far below 64 KiB and BIND's per-update limits


class DdnsFailure(Exception):
    """An update or an address read failed; str() is the reason shown to people (never a secret)."""


# --- talking to the server -----------------------------------------------------------------------------------------

_RCODE_HINTS = {
    dns.rcode.REFUSED: "the server refused the update: does its update-policy (or allow-update) grant key {key} "
                       "this name and type, and is the zone a primary there?",
    dns.rcode.NOTAUTH: "the server is not authoritative for zone {zone} (or did not accept key {key})",
    dns.rcode.NOTZONE: "a name of the update is not inside zone {zone}",
    dns.rcode.SERVFAIL: "the server failed to apply the update (see its log; e.g. the zone's journal is not "
                        "writable)",
    dns.rcode.FORMERR: "the server could not parse the update",
    dns.rcode.NOTIMP: "the server does not implement dynamic update",
}


def explain(exc: BaseException, cfg: DdnsConfig, zone: str) -> str:
    """One line saying what went wrong and what to check. Names the server, zone and key name, never the secret."""
    server, key, alg = cfg.server_text, repr(cfg.key_name), cfg.key_algorithm
    if isinstance(exc, DdnsFailure):
        return str(exc)
    if isinstance(exc, dns.tsig.PeerBadSignature):
        return (f"TSIG: {server} rejected our signature (BADSIG): the secret in key_file is not the one the server "
                f"has for key {key}")
    if isinstance(exc, dns.tsig.PeerBadKey):
        return f"TSIG: {server} does not know key {key} with algorithm {alg} (BADKEY): check key_name and the algorithm"
    if isinstance(exc, dns.tsig.PeerBadTime):
        return f"TSIG: {server} rejected the time of our signature (BADTIME): check both clocks"
    if isinstance(exc, dns.tsig.PeerError):
        return f"TSIG: {server} rejected our signature ({type(exc).__name__})"
    if isinstance(exc, (dns.tsig.BadSignature, dns.tsig.BadTime, dns.tsig.BadAlgorithm)):
        return f"TSIG: the answer of {server} is not signed right ({type(exc).__name__}): is it the server we meant?"
    if isinstance(exc, dns.exception.Timeout):
        return f"no answer from {server} within {cfg.timeout:g} s (server down or unreachable?)"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {server} (is the DNS server running and listening on TCP?)"
    if isinstance(exc, EOFError):
        return f"{server} closed the connection without answering"
    if isinstance(exc, OSError):
        return f"cannot reach {server}: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, ValueError):  # key_file unreadable or changed into something invalid
        return CONTROL_CHARS.sub(" ", str(exc))[:300]
    if isinstance(exc, dns.exception.DNSException):
        return f"DNS error with {server}: {type(exc).__name__}: {CONTROL_CHARS.sub(' ', str(exc))[:200]}"
    return f"{type(exc).__name__} talking to {server}"


def send_update(cfg: DdnsConfig, zone: str, build: Callable[[dns.update.UpdateMessage], None]) -> None:
    """Send one signed update for `zone` built by `build`; raises DdnsFailure with a readable reason."""
    try:
        key = cfg.load_key()  # read at every update: a rotated secret needs no restart
        keyname = dns.name.from_text(key.name)
        algorithm = dns.name.from_text(key.algorithm)
        msg = dns.update.UpdateMessage(zone, keyring={keyname: dns.tsig.Key(keyname, key.secret, algorithm)},
                                       keyname=keyname, keyalgorithm=algorithm)
        build(msg)
        answer = dns.query.tcp(msg, cfg.server, port=cfg.port, timeout=cfg.timeout)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reason, none escapes
        DDNS_UPDATES.labels(zone, "error").inc()
        raise DdnsFailure(explain(exc, cfg, zone)) from None
    rcode = answer.rcode()
    if rcode != dns.rcode.NOERROR:
        DDNS_UPDATES.labels(zone, "error").inc()
        hint = _RCODE_HINTS.get(rcode, "the server did not apply the update")
        raise DdnsFailure(f"{dns.rcode.to_text(rcode)} from {cfg.server_text}: "
                          + hint.format(key=repr(cfg.key_name), zone=zone))
    DDNS_UPDATES.labels(zone, "ok").inc()


# --- where a gateway's address comes from --------------------------------------------------------------------------

def read_interface_address(ifname: str) -> str:
    """The first global IPv4 address of `ifname` in the calling thread's namespace (primary before secondary)."""
    proc = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", ifname], capture_output=True, text=True,
                          timeout=10)
    if proc.returncode != 0:
        if "does not exist" in proc.stderr:
            raise DdnsFailure(f"interface {ifname} does not exist")
        raise DdnsFailure(f"`ip addr show dev {ifname}` failed: {proc.stderr.strip()[:200]}")
    infos = [a for link in json.loads(proc.stdout or "[]") for a in link.get("addr_info", [])
             if a.get("family") == "inet" and a.get("scope") == "global" and "local" in a]
    if not infos:
        raise DdnsFailure(f"interface {ifname} has no global IPv4 address")
    infos.sort(key=lambda a: bool(a.get("secondary")))
    return str(ipaddress.IPv4Address(infos[0]["local"]))


def read_default_route_address() -> str:
    """What external_address "auto" means: the default route's preferred address (as the dataplane reads it)."""
    _, preferred = read_namespace_addresses()
    if preferred is None:
        raise DdnsFailure("external_address is 'auto' but the namespace has no global IPv4 address")
    return str(preferred)


# --- state ---------------------------------------------------------------------------------------------------------

@dataclass
class _Target:
    """Publishing state shared by a gateway record and the machine records."""

    key: str  # metrics/log label: "gateway:<name>" or "machines"
    last_update_at: float | None = None  # Unix time of the last successful update
    last_error: str | None = None
    last_error_at: float | None = None
    failures: int = 0  # consecutive failed updates
    next_attempt: float = 0.0  # monotonic: no update before this (backoff)
    last_full: float | None = None  # monotonic time of the last successful full publish (for refresh)


@dataclass
class _GatewayRecord(_Target):
    gateway: str = ""
    name: str = ""
    source: str = ""
    address: str | None = None  # last read
    address_published: str | None = None
    reading_error: bool = False  # last_error is about reading the address, not about the server


@dataclass
class _Machines(_Target):
    zone: str = ""
    pushed: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] | None = None  # None: nothing known yet (start)
    desired: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    fingerprint: Any = None
    skipped: list[str] = field(default_factory=list)


class DdnsUpdater:
    """The DDNS worker of one labgate process (see the module docstring)."""

    def __init__(self, settings: Settings, db: Database, dataplane: Dataplane | None = None,
                 bus: Publisher | None = None) -> None:
        assert settings.ddns is not None
        self.cfg: DdnsConfig = settings.ddns
        self.settings = settings
        self.db = db
        self.dataplane = dataplane
        self.bus = bus
        self._lock = threading.Lock()  # guards the state objects against status() readers
        self.records: dict[str, _GatewayRecord] = {}
        for gw in settings.gateway:
            if gw.dns_name:
                self.records[gw.name] = _GatewayRecord(key=f"gateway:{gw.name}", gateway=gw.name, name=gw.dns_name,
                                                       source=self._source(gw))
        self.machines = _Machines(key="machines", zone=self.cfg.machine_zone) if self.cfg.machine_zone else None
        self._workers: dict[str, NamespaceWorker] = {}
        self._loop = Periodic("ddns", self._sleep_time, self.run_once, logger=log, failure_event="ddns_cycle_failed")

    @staticmethod
    def _source(gw: GatewayConfig) -> str:
        if gw.ddns_interface:
            return f"interface {gw.ddns_interface}"
        return "auto" if gw.external_address == "auto" else "config"

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Run a pass now, then again after every `_sleep_time()` on the "ddns" thread."""
        self._loop.start()

    def stop(self, timeout: float = 10) -> None:
        """Stop the thread. Published records stay: a restart must not make names flap."""
        self._loop.stop(timeout)
        for worker in self._workers.values():
            worker.close()
        self._workers.clear()

    def _sleep_time(self) -> float:
        """check_interval, or less when a retry is due sooner."""
        now = time.monotonic()
        wait = self.cfg.check_interval
        for target in self._targets():
            if target.failures:
                wait = min(wait, max(target.next_attempt - now, 0.01))
        return wait

    def _targets(self) -> list[_Target]:
        return [*self.records.values(), *([self.machines] if self.machines else [])]

    def run_once(self) -> None:
        """One pass: every gateway record, then the machine records."""
        for rec in self.records.values():
            if self._loop.stopping:
                return
            self._check_gateway(rec)
        if self.machines is not None and not self._loop.stopping:
            self._check_machines(self.machines)

    # --- outcomes --------------------------------------------------------------------------------------------------
    def _publish(self, action: str, **fields: Any) -> None:
        if self.bus is not None:
            self.bus.publish(Event.new("ddns", action=action, **fields))

    def _backoff(self, failures: int) -> float:
        delay = min(self.cfg.retry_max, self.cfg.retry_initial * 2 ** min(failures - 1, 30))
        return delay / 2 + random.uniform(0, delay / 2)  # equal jitter: gateways do not retry in step

    def _failed(self, target: _Target, reason: str, *, backoff: bool, **fields: Any) -> None:
        now = time.time()
        with self._lock:
            first = target.last_error is None
            changed = reason != target.last_error
            target.last_error, target.last_error_at = reason, now
            if backoff:
                target.failures += 1
                target.next_attempt = time.monotonic() + self._backoff(target.failures)
        DDNS_FAILING.labels(target.key).set(1)
        if changed:
            # A persistent failure is logged and published once, not at every retry.
            log.warning("event=ddns_failed target=%s error=%r", target.key, reason)
            self._publish("failed", error=reason, first=first, failures=target.failures, **fields)

    def _succeeded(self, target: _Target, *, full: bool, sent: bool = True, **fields: Any) -> None:
        """An update was applied (full: every record of the target was sent, which restarts the refresh clock;
        sent=False: there was nothing to send)."""
        with self._lock:
            if sent:
                target.last_update_at = time.time()
            if full:
                target.last_full = time.monotonic()
        self._recovered(target, **fields)

    def _recovered(self, target: _Target, **fields: Any) -> None:
        """Nothing is wrong any more: clear the error and the backoff."""
        with self._lock:
            previous, failures = target.last_error, target.failures
            target.last_error = None
            target.failures = 0
            target.next_attempt = 0.0
        DDNS_FAILING.labels(target.key).set(0)
        if previous is not None:
            log.info("event=ddns_recovered target=%s failures=%d", target.key, failures)
            self._publish("recovered", previous_error=previous, failures=failures, **fields)

    def _due(self, target: _Target) -> bool:
        return time.monotonic() >= target.next_attempt

    def _refresh_due(self, target: _Target) -> bool:
        return target.last_full is None or time.monotonic() - target.last_full >= self.cfg.refresh

    # --- gateway records -------------------------------------------------------------------------------------------
    def _worker(self, netns: str) -> NamespaceWorker:
        worker = self._workers.get(netns)
        if worker is None:
            worker = self._workers[netns] = NamespaceWorker(netns)
        return worker

    def read_address(self, gw: GatewayConfig) -> str:
        """The address gateway `gw`'s name should point at now; raises DdnsFailure saying why it is unknown."""
        if gw.ddns_interface is None and gw.external_address != "auto":
            return gw.external_address
        where = f"namespace {gw.netns!r}" if gw.netns else "the host namespace"
        # A child process started from the namespace thread runs in that namespace (docs/design.md).
        fn = (lambda: read_interface_address(gw.ddns_interface)) if gw.ddns_interface else read_default_route_address
        try:
            return self._worker(gw.netns).run(fn, timeout=30)
        except DdnsFailure as exc:
            raise DdnsFailure(f"reading the address in {where}: {exc}") from None
        except NamespaceError as exc:
            raise DdnsFailure(f"reading the address: {exc}") from None
        except (OSError, subprocess.SubprocessError, ValueError, TimeoutError) as exc:
            raise DdnsFailure(f"reading the address in {where}: {type(exc).__name__}: {exc}") from None

    def _check_gateway(self, rec: _GatewayRecord) -> None:
        gw = self.settings.get_gateway(rec.gateway)
        assert gw is not None
        fields = {"gateway": rec.gateway, "name": rec.name}
        try:
            address = self.read_address(gw)
        except DdnsFailure as exc:
            # The record keeps its last address: an interface briefly without one must not remove the name.
            rec.reading_error = True
            self._failed(rec, str(exc), backoff=False, **fields)
            return
        previous_seen = rec.address
        with self._lock:
            rec.address = address
        if previous_seen is not None and previous_seen != address:
            log.info("event=ddns_address_changed gateway=%s address=%s previous=%s", rec.gateway, address,
                     previous_seen)
            self._address_changed(gw)
        changed = address != rec.address_published
        if not changed and not self._refresh_due(rec):
            if rec.reading_error and rec.last_error is not None:
                rec.reading_error = False
                self._recovered(rec, **fields)  # the address is readable again and already published
            return
        if not self._due(rec):
            return
        zone = self.cfg.zone
        try:
            send_update(self.cfg, zone, lambda m: m.replace(dns.name.from_text(rec.name), self.cfg.ttl, "A", address))
        except DdnsFailure as exc:
            rec.reading_error = False
            self._failed(rec, str(exc), backoff=True, address=address, **fields)
            return
        previous = rec.address_published
        with self._lock:
            rec.address_published = address
        rec.reading_error = False
        self._succeeded(rec, full=True, **fields)
        if changed:
            log.info("event=ddns_published gateway=%s name=%s address=%s previous=%s", rec.gateway, rec.name,
                     address, previous)
            self._publish("published", address=address, previous=previous, zone=zone, **fields)

    def _address_changed(self, gw: GatewayConfig) -> None:
        """With external_address "auto", the dataplane's rules carry the old address: re-render them now."""
        if gw.external_address == "auto" and self.dataplane is not None:
            gwdp = self.dataplane.get(gw.name)
            if gwdp is not None and gwdp.kernel:
                self.dataplane.request_full_sync(gw.name)

    # --- machine records -------------------------------------------------------------------------------------------
    def _gateway_hosts(self) -> dict[str, str]:
        """What a machine's TXT record names as the way in: the gateway's DNS name, else its external address."""
        hosts: dict[str, str] = {}
        for gw in self.settings.gateway:
            if gw.dns_name:
                hosts[gw.name] = gw.dns_name
                continue
            gwdp = self.dataplane.get(gw.name) if self.dataplane is not None else None
            if gwdp is not None and gwdp.external_address is not None:
                hosts[gw.name] = str(gwdp.external_address)
            elif gw.external_address != "auto":
                hosts[gw.name] = gw.external_address
        return hosts

    def _fingerprint(self, hosts: dict[str, str]) -> tuple:
        """Changes whenever a forward is created, changed or deleted (count, highest id, latest update)."""
        return queries.forwards_fingerprint(self.db) + (tuple(sorted(hosts.items())),)

    def desired_machines(self, hosts: dict[str, str] | None = None) -> tuple[dict[str, tuple[tuple[str, ...],
                                                                                             tuple[str, ...]]],
                                                                             list[str]]:
        """{label: (A addresses, TXT texts)} from the enabled forwards that have a name, and the names skipped
        (not usable as a DNS label, or the same name as a gateway's record)."""
        assert self.machines is not None
        hosts = self._gateway_hosts() if hosts is None else hosts
        zone = dns.name.from_text(self.machines.zone)
        taken = {dns.name.from_text(gw.dns_name) for gw in self.settings.gateway if gw.dns_name}
        rows = queries.named_enabled_forwards(self.db)
        addresses: dict[str, set[str]] = {}
        texts: dict[str, set[str]] = {}
        skipped: set[str] = set()
        for r in rows:
            label = r.name.lower()
            if not MACHINE_LABEL_RE.fullmatch(label) or dns.name.Name((label,)).concatenate(zone) in taken:
                skipped.add(r.name)
                continue
            addresses.setdefault(label, set()).add(r.target_address)
            host = hosts.get(r.gateway)
            if host is not None:
                last = r.port_count - 1
                target = f"{r.target_port}" + (f"-{r.target_port + last}" if last else "")
                external = f"{r.external_port}" + (f"-{r.external_port + last}" if last else "")
                texts.setdefault(label, set()).add(f"{r.protocol}/{target} -> {host}:{external}")
        desired = {label: (tuple(sorted(addrs, key=ipaddress.ip_address)), tuple(sorted(texts.get(label, ()))))
                   for label, addrs in addresses.items()}
        return desired, sorted(skipped)

    def _check_machines(self, ms: _Machines) -> None:
        full = ms.pushed is None or self._refresh_due(ms)
        try:
            hosts = self._gateway_hosts()
            fingerprint = self._fingerprint(hosts)  # read before the forwards: a change in between shows next time
            if full or fingerprint != ms.fingerprint:
                desired, skipped = self.desired_machines(hosts)
                if skipped and skipped != ms.skipped:
                    log.warning("event=ddns_machines_skipped names=%s (not usable as a DNS label, or a gateway's "
                                "name)", ",".join(skipped[:20]))
                with self._lock:
                    ms.desired, ms.skipped, ms.fingerprint = desired, skipped, fingerprint
        except Exception as exc:  # noqa: BLE001 - e.g. the database is briefly unavailable
            self._failed(ms, f"reading forwards: {type(exc).__name__}: {exc}"[:300], backoff=False, zone=ms.zone)
            return
        initial = ms.pushed is None
        pushed = dict(ms.pushed or {})
        desired = ms.desired
        differ = {n for n in desired if pushed.get(n) != desired[n]}
        removals = sorted(n for n in pushed if n not in desired)
        # At start nothing is known of the zone, and every `refresh` the zone may have been edited by hand:
        # then every name is sent (replace), otherwise only the difference to what was last pushed.
        changes = sorted(desired) if full else sorted(differ)
        if not changes and not removals:
            if full:
                with self._lock:
                    ms.pushed = {}
                self._succeeded(ms, full=True, sent=False, zone=ms.zone)
            elif ms.last_error is not None and ms.failures == 0:
                self._recovered(ms, zone=ms.zone)  # the database is readable again
            return
        if not self._due(ms):
            return
        zone = dns.name.from_text(ms.zone)
        ttl = self.cfg.ttl
        work: list[tuple[str, tuple[tuple[str, ...], tuple[str, ...]] | None]] = \
            [(n, desired[n]) for n in changes] + [(n, None) for n in removals]
        for i in range(0, len(work), MACHINES_PER_MESSAGE):
            batch = work[i:i + MACHINES_PER_MESSAGE]

            def build(m: dns.update.UpdateMessage, batch=batch) -> None:
                for label, records in batch:
                    name = dns.name.Name((label,)).concatenate(zone)
                    if records is None:
                        m.delete(name, "A")
                        m.delete(name, "TXT")
                        continue
                    addrs, txts = records
                    m.replace(name, ttl, "A", *addrs)
                    if txts:
                        m.replace(name, ttl, "TXT", *[f'"{t}"' for t in txts])
                    else:
                        m.delete(name, "TXT")

            try:
                send_update(self.cfg, ms.zone, build)
            except DdnsFailure as exc:
                self._failed(ms, str(exc), backoff=True, zone=ms.zone)
                return
            with self._lock:
                if ms.pushed is None:
                    ms.pushed = {}
                for label, records in batch:
                    if records is None:
                        ms.pushed.pop(label, None)
                    else:
                        ms.pushed[label] = records
            if initial:
                continue  # the start-up push is one summary event below, not one per name
            for label, records in batch:
                if records is not None and label not in differ:
                    continue  # sent again by the refresh, unchanged
                action = "machine_removed" if records is None else \
                    "machine_updated" if label in pushed else "machine_added"
                fqdn = f"{label}.{ms.zone}"
                addresses = ",".join(records[0]) if records else None
                log.info("event=ddns_%s name=%s addresses=%s", action, fqdn, addresses or "")
                self._publish(action, name=fqdn, zone=ms.zone, addresses=addresses,
                              services=len(records[1]) if records else 0)
        if initial:
            log.info("event=ddns_machines_published zone=%s names=%d", ms.zone, len(changes))
            self._publish("machines_published", zone=ms.zone, names=len(changes))
        self._succeeded(ms, full=full, zone=ms.zone)

    # --- status ----------------------------------------------------------------------------------------------------
    def _target_status(self, t: _Target) -> dict[str, Any]:
        retry_in = max(t.next_attempt - time.monotonic(), 0.0) if t.failures else None
        return {"last_update_at": t.last_update_at, "last_error": t.last_error, "last_error_at": t.last_error_at,
                "failures": t.failures, "next_retry_at": time.time() + retry_in if retry_in is not None else None}

    def gateway_status(self, gateway: str) -> dict[str, Any] | None:
        """The `ddns` object of a gateway in GET /api/v1/gateways (None: the gateway has no dns_name)."""
        rec = self.records.get(gateway)
        if rec is None:
            return None
        with self._lock:
            return {"name": rec.name, "source": rec.source, "address": rec.address,
                    "address_published": rec.address_published, **self._target_status(rec)}

    def machines_status(self) -> dict[str, Any] | None:
        ms = self.machines
        if ms is None:
            return None
        with self._lock:
            pushed = ms.pushed or {}
            pending = sum(1 for n in ms.desired if pushed.get(n) != ms.desired[n]) + \
                sum(1 for n in pushed if n not in ms.desired)
            return {"zone": ms.zone, "names": len(ms.desired), "published": len(pushed), "pending": pending,
                    "skipped": ms.skipped[:50], **self._target_status(ms)}

    def status(self) -> dict[str, Any]:
        """Everything people need to see: where updates go and how they fare. Never the secret."""
        return {
            "configured": True,
            "server": self.cfg.server_text,
            "zone": self.cfg.zone,
            "key_name": self.cfg.key_name,
            "key_algorithm": self.cfg.key_algorithm,
            "ttl": self.cfg.ttl,
            "refresh": self.cfg.refresh,
            "gateways": [{"gateway": name, **(self.gateway_status(name) or {})} for name in self.records],
            "machines": self.machines_status(),
        }
