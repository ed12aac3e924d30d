"""Make the kernel equal the database: one GatewayDataplane per gateway, and the Dataplane that owns them all.

Entry points:
  GatewayDataplane.apply(remove, add, cut)  a partial sync (element changes in one batch) for one API change
  GatewayDataplane.full_sync(rules)         the whole table replaced atomically from the committed state
  Dataplane.reconcile_once()                per gateway: full sync if needed (start, failure, drift, namespace
                                            re-created), otherwise a cheap intactness check
Any failure sets `needs_full`, so the next pass re-renders everything. Callers hold `gateway.lock` around
"apply + database commit" so a full sync never reads a state the kernel is about to diverge from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import json
import logging
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from labgate.config import GatewayConfig
from labgate.dataplane import conntrack
from labgate.dataplane.netns import NamespaceError, NamespaceWorker
from labgate.dataplane.nft import NftError, NftRunner, open_runner, parse_json
from labgate.dataplane.render import (
    CHAINS,
    USAGE_CHAINS,
    USAGE_SETS,
    ForwardRule,
    GatewayShape,
    render_changes,
    render_check,
    render_list_set,
    render_gateway_table,
    render_usage_ensure,
    render_usage_table,
)

log = logging.getLogger("labgate.dataplane")

SYNC_SECONDS = Histogram(
    "labgate_sync_duration_seconds", "Time to apply a change to the kernel", ["gateway", "kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SYNC_FAILURES = Counter("labgate_sync_failures_total", "Kernel changes that failed", ["gateway", "kind"])
DRIFT_REPAIRS = Counter("labgate_drift_repairs_total", "Full syncs caused by drift found in the kernel", ["gateway"])
RULES = Gauge("labgate_kernel_forwards", "Forwards present in the kernel after the last full sync", ["gateway"])
PROBLEMS = Gauge("labgate_gateway_problem", "1 while a gateway has this problem (check: forwarding, "
                 "connection_events, ...), else 0", ["gateway", "check"])
FORWARDING = Gauge("labgate_gateway_forwarding", "1 if the gateway's namespace routes packets (net.ipv4.ip_forward), "
                   "0 if not", ["gateway"])
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


T = TypeVar("T")
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def release_memory() -> None:
    """Give freed heap back to the system (glibc keeps it otherwise): after a big render or listing."""
    try:
        _libc.malloc_trim(0)
    except AttributeError:  # not glibc
        pass


class DataplaneError(RuntimeError):
    """The kernel refused or could not be reached; str() says why in one line."""


@dataclass(frozen=True)
class GatewayProblem:
    """Something that keeps a synced gateway from doing all its work, and the command or setting that fixes it."""

    check: str     # "forwarding" (no packet passes), "connection_events" (no connection is reported), ...
    message: str
    fix: str


@dataclass
class GatewayHealth:
    # "ok"; "not_forwarding" (rules in place but the namespace does not route); "degraded" (forwarding, but a
    # background worker cannot run); "error" (the kernel refused or is unreachable); "pending" (not synced yet);
    # "off" (no dataplane in this process)
    status: str
    last_error: str | None
    last_full_sync_at: float | None
    forwards_in_kernel: int | None
    problems: tuple[GatewayProblem, ...] = ()


class GatewayDataplane:
    """The kernel state of one gateway: its namespace thread, its table, its addresses."""

    def __init__(self, cfg: GatewayConfig, *, kernel: bool = True, runner_factory: Callable[[], NftRunner] = open_runner):
        self.cfg = cfg
        self.kernel = kernel
        self.lock = threading.RLock()
        self.needs_full = True
        self.last_error: str | None = None
        self.last_full_sync_at: float | None = None
        self.forwards_in_kernel: int | None = None
        self.external_address: ipaddress.IPv4Address | None = (
            None if cfg.external_address == "auto" else ipaddress.IPv4Address(cfg.external_address)
        )
        self.local_addresses: frozenset[ipaddress.IPv4Address] = frozenset()
        self._runner_factory = runner_factory
        self._runner: NftRunner | None = None
        self._runner_generation = -1
        self.worker = NamespaceWorker(cfg.netns) if kernel else None
        self.reader = NamespaceWorker(cfg.netns) if kernel else None
        self._problems: dict[str, GatewayProblem] = {}
        self._problems_lock = threading.Lock()

    # --- inside the namespace thread -------------------------------------------------------------------------
    def _nft(self, text: str, *, json: bool = False, terse: bool = False) -> str:
        assert self.worker is not None
        if self._runner is None or self._runner_generation != self.worker.generation:
            # A netlink socket belongs to the namespace it was opened in: re-open after re-entering.
            if self._runner is not None:
                self._runner.close()
            self._runner = self._runner_factory()
            self._runner_generation = self.worker.generation
        return self._runner.run(text, json=json, terse=terse)

    def _run(self, fn: Callable[[], object], what: str) -> object:
        if self.worker is None:
            return None
        try:
            return self.worker.run(fn)
        except (NftError, NamespaceError, conntrack.ConntrackUnavailable, OSError, subprocess.SubprocessError) as exc:
            self.needs_full = True
            self.last_error = f"{what}: {exc}".splitlines()[0] if str(exc) else what
            raise DataplaneError(self.last_error) from exc

    @staticmethod
    def _read_addresses() -> tuple[list[ipaddress.IPv4Address], ipaddress.IPv4Address | None]:
        """All IPv4 addresses of the current namespace, and the default route's preferred one."""
        addrs = json.loads(subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True,
                                          check=True, timeout=10).stdout or "[]")
        routes = json.loads(subprocess.run(["ip", "-j", "-4", "route", "show", "default"], capture_output=True,
                                           text=True, check=True, timeout=10).stdout or "[]")
        local = [ipaddress.IPv4Address(a["local"]) for link in addrs for a in link.get("addr_info", []) if "local" in a]
        preferred = None
        if routes:
            dev = routes[0].get("dev")
            src = routes[0].get("prefsrc")
            if src:
                preferred = ipaddress.IPv4Address(src)
            else:
                for link in addrs:
                    if link.get("ifname") == dev:
                        glob = [a for a in link.get("addr_info", []) if a.get("scope") == "global"]
                        if glob:
                            preferred = ipaddress.IPv4Address(glob[0]["local"])
        if preferred is None:
            glob = [ipaddress.IPv4Address(a["local"]) for link in addrs for a in link.get("addr_info", [])
                    if a.get("scope") == "global"]
            preferred = glob[0] if glob else None
        return local, preferred

    # --- public ----------------------------------------------------------------------------------------------
    def refresh_addresses(self) -> None:
        """Learn the namespace's own addresses (targets may not be one) and, for "auto", the external address."""
        if self.worker is None:
            return
        local, preferred = self._run(self._read_addresses, "reading addresses")  # type: ignore[misc]
        self.local_addresses = frozenset(local)
        if self.cfg.external_address == "auto":
            if preferred is None:
                self.last_error = "external_address is 'auto' but the namespace has no global IPv4 address"
                raise DataplaneError(self.last_error)
            self.external_address = preferred

    def shape(self) -> GatewayShape:
        if self.external_address is None:
            raise DataplaneError(self.last_error or "the gateway's external address is not known yet")
        return GatewayShape(self.cfg.table_name, self.external_address, tuple(self.cfg.ranges), self.cfg.masquerade)

    def apply(self, remove: Iterable[ForwardRule], add: Iterable[ForwardRule], cut: Iterable[int] = ()) -> None:
        """Partial sync: delete `remove`'s elements, add `add`'s, in one batch; then cut conntrack marks `cut`.

        Raises DataplaneError if the kernel refuses (it is then unchanged) or the namespace is gone.
        """
        if self.worker is None:
            return
        remove, add, cut = list(remove), list(add), sorted(set(cut))
        text = render_changes(self.shape(), remove, add)
        started = time.perf_counter()

        def job() -> None:
            if text:
                self._nft(text)
            if cut:
                self._cut_in_namespace(cut)

        try:
            self._run(job, "applying change")
        except DataplaneError:
            SYNC_FAILURES.labels(self.cfg.name, "partial").inc()
            raise
        SYNC_SECONDS.labels(self.cfg.name, "partial").observe(time.perf_counter() - started)
        if self.forwards_in_kernel is not None:
            self.forwards_in_kernel += len(add) - len(remove)

    def _cut_in_namespace(self, marks: list[int]) -> None:
        # The rule change is already in the kernel: a conntrack failure must not undo it, only be reported.
        try:
            conntrack.delete_by_marks(marks)
        except (conntrack.ConntrackUnavailable, OSError, subprocess.SubprocessError) as exc:
            self.last_error = f"cutting open connections: {exc}"
            log.error("event=conntrack_failed gateway=%s marks=%s error=%r", self.cfg.name, marks, str(exc))

    def cut(self, marks: Iterable[int]) -> None:
        """Delete the conntrack entries of these forward ids (established sessions through them stop).

        `conntrack -D` walks the host's whole conntrack hash (~12 ms here), so it runs on the reader thread:
        callers do it after their commit and outside the gateway lock, and other changes do not wait for it."""
        marks = sorted(set(marks))
        if self.reader is not None and marks:
            try:
                self.reader.run(lambda: self._cut_in_namespace(marks))
            except (NamespaceError, OSError) as exc:
                log.error("event=conntrack_failed gateway=%s marks=%s error=%r", self.cfg.name, marks, str(exc))

    def full_sync(self, rules: list[ForwardRule]) -> None:
        """Replace the whole table with `rules` in one atomic batch. Raises DataplaneError on failure."""
        if self.worker is None:
            self.needs_full = False
            return
        started = time.perf_counter()
        try:
            self.refresh_addresses()
            shape = self.shape()
            text = render_gateway_table(shape, rules)
            ids = [r.id for r in rules]

            def job() -> None:
                # Counters live in their own table: repaired in place (their counts kept); only if that is refused
                # (a set of the wrong type, say) is the counters table rebuilt from zero.
                try:
                    try:
                        self._nft(text + render_usage_ensure(shape, ids))
                    except NftError:
                        self._nft(text + render_usage_table(shape, ids))
                finally:
                    # A context that rendered 50,000 elements keeps them cached: start the next one fresh.
                    if self._runner is not None:
                        self._runner.close()
                        self._runner = None
                    release_memory()

            self._run(job, "full sync")
        except DataplaneError:
            SYNC_FAILURES.labels(self.cfg.name, "full").inc()
            raise
        elapsed = time.perf_counter() - started
        SYNC_SECONDS.labels(self.cfg.name, "full").observe(elapsed)
        RULES.labels(self.cfg.name).set(len(rules))
        self.needs_full = False
        self.last_error = None
        self.last_full_sync_at = time.time()
        self.forwards_in_kernel = len(rules)
        log.info("event=full_sync gateway=%s forwards=%d seconds=%.3f", self.cfg.name, len(rules), elapsed)

    @staticmethod
    def _table_intact(runner: NftRunner, table: str, expected: dict[str, int]) -> bool:
        """Does `table` exist with exactly these chains and rule counts?"""
        try:
            out = runner.run(render_check(table), json=True, terse=True)
        except NftError:
            return False
        rules: dict[str, int] = {name: 0 for name in expected}
        chains = set()
        for item in parse_json(out):
            if "chain" in item:
                chains.add(item["chain"]["name"])
            elif "rule" in item and item["rule"].get("chain") in rules:
                rules[item["rule"]["chain"]] += 1
        return chains == set(expected) and rules == expected

    def check_tables(self) -> tuple[bool, bool]:
        """Drift check: (forwarding table intact, usage table intact). Runs on the reader thread without the
        gateway lock: nft 1.0.6 fetches every element even for a terse listing (~1 s at 50,000 forwards), and
        API changes must not wait for that. A change in flight never removes chains or rules, so it cannot make
        this check fail."""
        if self.worker is None:
            return True, True
        if self.external_address is None:
            return False, False
        shape = self.shape()
        expected = dict(CHAINS)
        if not self.cfg.masquerade:
            expected["postrouting"] = 0
        try:
            return self._read(lambda r: (self._table_intact(r, shape.table, expected),
                                         self._table_intact(r, shape.usage_table, USAGE_CHAINS)), "checking tables")
        except DataplaneError:
            return False, False

    def intact(self) -> bool:
        return all(self.check_tables())

    def _read(self, fn: Callable[[NftRunner], T], what: str) -> T:
        """Run fn on the reader thread (second namespace thread) with a fresh nft context, released afterwards:
        a listing of 50,000 elements leaves ~100-200 MiB in a context's cache otherwise."""
        assert self.reader is not None

        def job() -> T:
            runner = self._runner_factory()
            try:
                return fn(runner)
            finally:
                runner.close()
                release_memory()

        try:
            return self.reader.run(job)
        except (NftError, NamespaceError, OSError) as exc:
            raise DataplaneError(f"{what}: {exc}".splitlines()[0]) from exc

    def read_usage(self) -> dict[int, tuple[int, int, int]]:
        """{forward id: (connections, packets, bytes)} from the kernel counters. Runs on the reader thread so a
        slow listing never delays an API change."""
        if self.worker is None or self.external_address is None:
            return {}
        table = self.shape().usage_table

        def read(runner: NftRunner) -> dict[int, tuple[int, int, int]]:
            counts = {name: parse_counters(runner.run(render_list_set(table, name), json=True))
                      for name in USAGE_SETS}
            return {i: (counts["conns"].get(i, (0, 0))[0],) + counts["traffic"].get(i, (0, 0))
                    for i in counts["traffic"].keys() | counts["conns"].keys()}

        return self._read(read, "reading counters")

    def remove_table(self) -> None:
        """Delete labgate's table for this gateway (used by `demo --down` and tests); no error if absent."""
        if self.worker is None or not self.worker.exists():
            return
        t = self.cfg.table_name
        self._run(lambda: self._nft(f"add table ip {t}\ndelete table ip {t}\n"), "removing table")

    # --- problems that are not sync failures -------------------------------------------------------------------
    def set_problem(self, check: str, message: str | None, fix: str = "") -> None:
        """Record (message) or clear (None) a problem of this gateway; logged once when it appears or clears."""
        with self._problems_lock:
            old = self._problems.get(check)
            if message is None:
                if old is None:
                    return
                del self._problems[check]
            else:
                if old is not None and old.message == message and old.fix == fix:
                    return
                self._problems[check] = GatewayProblem(check, message, fix)
        PROBLEMS.labels(self.cfg.name, check).set(0 if message is None else 1)
        if message is None:
            log.info("event=gateway_problem_cleared gateway=%s check=%s", self.cfg.name, check)
        else:
            log.warning("event=gateway_problem gateway=%s check=%s message=%r fix=%r", self.cfg.name, check,
                        message, fix)

    def problems(self) -> tuple[GatewayProblem, ...]:
        with self._problems_lock:
            return tuple(self._problems.values())

    def check_forwarding(self) -> None:
        """Is net.ipv4.ip_forward on in the gateway's namespace? Without it a forward is accepted, its rules are in
        place, and no packet passes. Turned on where the gateway's config allows it, else reported with the fix."""
        if self.worker is None:
            return
        manage = self.cfg.manages_forwarding

        def job() -> bool:
            # /proc/sys/net is the namespace of the thread that opens it: this one lives in the gateway's.
            with open(IP_FORWARD) as f:
                if f.read().strip() != "0":
                    return True
            if not manage:
                return False
            with open(IP_FORWARD, "w") as f:
                f.write("1")
            log.info("event=forwarding_enabled gateway=%s netns=%s", self.cfg.name, self.cfg.netns or "(host)")
            return True

        try:
            forwarding = self.worker.run(job)
        except (NamespaceError, OSError) as exc:
            self.set_problem("forwarding", f"cannot read or turn on net.ipv4.ip_forward: {exc}",
                             self._forwarding_fix())
            FORWARDING.labels(self.cfg.name).set(0)
            return
        FORWARDING.labels(self.cfg.name).set(1 if forwarding else 0)
        if forwarding:
            self.set_problem("forwarding", None)
        else:
            where = f"namespace {self.cfg.netns!r}" if self.cfg.netns else "the host's namespace"
            self.set_problem("forwarding", f"net.ipv4.ip_forward is 0 in {where}: forwards are in place but no "
                             "packet is forwarded", self._forwarding_fix())

    def _forwarding_fix(self) -> str:
        run = f"ip netns exec {self.cfg.netns} " if self.cfg.netns else ""
        return (f"{run}sysctl -w net.ipv4.ip_forward=1 (or set enable_forwarding = true in gateway "
                f"{self.cfg.name!r}'s config)")

    def health(self) -> GatewayHealth:
        problems = self.problems()
        if self.worker is None:
            status = "off"
        elif self.last_error and self.needs_full:
            status = "error"
        elif self.last_full_sync_at is None:
            status = "pending"
        elif any(p.check == "forwarding" for p in problems):
            status = "not_forwarding"
        elif problems:
            status = "degraded"
        else:
            status = "ok"
        return GatewayHealth(status, self.last_error, self.last_full_sync_at, self.forwards_in_kernel, problems)

    def close(self) -> None:
        if self.worker is not None:
            runner = self._runner
            if runner is not None:
                try:
                    self.worker.run(runner.close, timeout=5)
                except Exception:  # noqa: BLE001 - closing on shutdown must not raise
                    pass
            self.worker.close()
        if self.reader is not None:
            self.reader.close()


def parse_counters(output: str) -> dict[int, tuple[int, int]]:
    """`nft -j list set` output of a counter set -> {element: (packets, bytes)}."""
    out: dict[int, tuple[int, int]] = {}
    for item in parse_json(output):
        for elem in item.get("set", {}).get("elem", []) or []:
            inner = elem.get("elem", elem) if isinstance(elem, dict) else None
            if isinstance(inner, dict) and isinstance(inner.get("val"), int):
                counter = inner.get("counter") or {}
                out[inner["val"]] = (int(counter.get("packets", 0)), int(counter.get("bytes", 0)))
    return out


RulesLoader = Callable[[GatewayDataplane], list[ForwardRule]]


class Dataplane:
    """All gateways of this process, and the loop that keeps each one equal to the database."""

    def __init__(self, gateways: list[GatewayConfig], load_rules: RulesLoader, *, kernel: bool = True,
                 interval: float = 30.0, full_interval: float | None = 600.0,
                 runner_factory: Callable[[], NftRunner] = open_runner) -> None:
        self.gateways = {g.name: GatewayDataplane(g, kernel=kernel, runner_factory=runner_factory) for g in gateways}
        self.load_rules = load_rules
        self.interval = interval
        self.full_interval = full_interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, name: str) -> GatewayDataplane | None:
        return self.gateways.get(name)

    def reconcile_gateway(self, gw: GatewayDataplane) -> bool:
        """Full sync if needed or drifted; returns True if the gateway is in sync afterwards."""
        if gw.worker is None:  # no dataplane in this process (serve --no-agent): nothing to keep in sync
            gw.needs_full = False
            return True
        drifted = False
        stale = (self.full_interval is not None and gw.last_full_sync_at is not None
                 and time.time() - gw.last_full_sync_at >= self.full_interval)
        if stale:
            # The structure check cannot see one element deleted by hand; a periodic full render can.
            gw.needs_full = True
        if not gw.needs_full:
            main_ok, usage_ok = gw.check_tables()  # outside the lock: it can take a second at 50,000 forwards
            drifted = not (main_ok and usage_ok)
            if drifted:
                log.warning("event=drift gateway=%s action=full_sync", gw.cfg.name)
                DRIFT_REPAIRS.labels(gw.cfg.name).inc()
        with gw.lock:
            if gw.needs_full or drifted:
                previous = gw.last_error
                try:
                    gw.refresh_addresses()  # an "auto" external address must be known before rules are built
                    gw.full_sync(self.load_rules(gw))
                except DataplaneError as exc:
                    gw.needs_full = True
                    gw.last_error = str(exc)
                    # A persistent failure is logged once, not every retry.
                    if str(exc) != previous:
                        log.error("event=sync_failed gateway=%s error=%r", gw.cfg.name, str(exc))
                    return False
                except Exception as exc:  # noqa: BLE001 - e.g. the database is briefly unavailable
                    gw.needs_full = True
                    gw.last_error = f"loading forwards: {exc}"
                    if gw.last_error != previous:
                        log.exception("event=sync_failed gateway=%s", gw.cfg.name)
                    return False
        gw.check_forwarding()
        return True

    def reconcile_once(self) -> bool:
        return all([self.reconcile_gateway(gw) for gw in self.gateways.values()])

    def request_full_sync(self, name: str) -> None:
        """Mark a gateway dirty and wake the loop now (after a failed partial change or commit)."""
        gw = self.gateways.get(name)
        if gw is not None:
            gw.needs_full = True
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("event=reconcile_crashed")
            # Retry sooner while something is broken; otherwise wait the interval (or a wake-up).
            pending = any(gw.needs_full for gw in self.gateways.values())
            self._wake.wait(min(self.interval, 2.0) if pending else self.interval)
            self._wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconcile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for gw in self.gateways.values():
            gw.close()
