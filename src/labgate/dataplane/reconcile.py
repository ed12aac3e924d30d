"""Make the kernel equal the database: one GatewayDataplane per gateway, the Dataplane that owns them all, and
the one sync entry point every change goes through (shaped like kube-proxy's syncProxyRules).

    with dataplane.change("lab") as gw:          # the gateway's lock, for "sync the kernel, then commit"
        gw.sync(RuleChange(remove, add), desired=rules_of_the_open_transaction)
        session.commit()                         # if this raises, the gateway is re-synced from the committed state

`GatewayDataplane.sync()` decides partial or full: with a change and a clean gateway, the change's elements in one
batch; otherwise (start, an earlier failure, drift, a re-created namespace), or when the partial batch is refused,
the whole table from the desired state in one atomic batch. Any failure marks the gateway for a full sync and is
recorded in one place (`_failed`): status, metrics, one log line (the refused batch at debug level).
The Dataplane's loop (`reconcile_once`) does the rest: a cheap structure check, a full sync when drifted, dirty or
due (`full_resync_interval`), and the forwarding check.

The kernel itself is behind `GatewayKernel` (kernel.py): the real namespace, or the in-memory fake (fake.py).
The desired state comes from a `RulesSource` the assembly hands in (the database), so this package never imports
the layers above it.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from prometheus_client import Counter, Gauge, Histogram

from labgate.config import GatewayConfig
from labgate.periodic import Periodic
from labgate.dataplane.conntrack import Connection
from labgate.dataplane.kernel import GatewayKernel, KernelError
from labgate.dataplane.render import (
    CHAINS,
    SENTINELS,
    USAGE_CHAINS,
    USAGE_SETS,
    ForwardRule,
    GatewayShape,
    render_changes,
    render_drop_tables,
    RuleRow,
    as_rows,
    render_gateway_parts,
    render_usage_ensure,
    render_usage_table,
)

log = logging.getLogger("labgate.dataplane")

SYNC_SECONDS = Histogram(
    "labgate_sync_duration_seconds", "Time to apply a change to the kernel", ["gateway", "kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SYNC_FAILURES = Counter("labgate_sync_failures_total", "Kernel changes that failed", ["gateway", "kind"])
LAST_SYNC = Gauge("labgate_last_sync_timestamp_seconds", "When the kernel last matched the database (Unix time)",
                  ["gateway"])
DRIFT_REPAIRS = Counter("labgate_drift_repairs_total", "Full syncs caused by drift found in the kernel", ["gateway"])
RULES = Gauge("labgate_kernel_forwards", "Forwards present in the kernel after the last full sync", ["gateway"])
PROBLEMS = Gauge("labgate_gateway_problem", "1 while a gateway has this problem (check: forwarding, "
                 "connection_events, ...), else 0", ["gateway", "check"])
FORWARDING = Gauge("labgate_gateway_forwarding", "1 if the gateway's namespace routes packets (net.ipv4.ip_forward), "
                   "0 if not", ["gateway"])


class DataplaneError(RuntimeError):
    """The kernel refused or could not be reached; str() says why in one line."""


class ChangeRefused(DataplaneError):
    """The kernel refuses this change itself (the gateway is in sync without it, and keeps working)."""


class RulesSource(Protocol):
    """The committed desired state: the rules of a gateway's enabled forwards, towards `external`."""

    def enabled_rules(self, gateway: str, external: ipaddress.IPv4Address) -> list[ForwardRule]: ...

    # Optional: `enabled_rows(gateway) -> list[RuleRow]`, the same forwards as rows (a full render's fast path).


# The desired forwards of a full sync, as ForwardRule objects or as rows (render.RuleRow).
DesiredRules = Callable[[ipaddress.IPv4Address], "Sequence[ForwardRule] | Sequence[RuleRow]"]
KernelFactory = Callable[[GatewayConfig], GatewayKernel]


@dataclass(frozen=True)
class RuleChange:
    """What one API change does to a gateway's rules: the old rules out, the new ones in (a retarget is both)."""

    remove: tuple[ForwardRule, ...] = ()
    add: tuple[ForwardRule, ...] = ()

    @classmethod
    def of(cls, remove: Iterable[ForwardRule | None] = (), add: Iterable[ForwardRule | None] = ()) -> "RuleChange":
        return cls(tuple(r for r in remove if r is not None), tuple(r for r in add if r is not None))


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
    """The kernel state of one gateway: its kernel, its table's shape, its addresses, whether it is in sync."""

    def __init__(self, cfg: GatewayConfig, kernel: GatewayKernel | None, source: RulesSource) -> None:
        self.cfg = cfg
        self.kernel = kernel
        self.source = source
        self.lock = threading.RLock()
        self.needs_full = True
        # Set when the gateway is removed (remove_gateway) or the dataplane stops: whoever still holds it (a
        # reconcile pass, a request that found it just before) leaves its kernel alone.
        self.closed = False
        # Set (under `lock`) when the gateway is being taken out of service (its router went): no change may start
        # on it any more, while its kernel is still there to cut sessions and drop its table.
        self.retiring = False
        self.syncs = 0  # successful syncs (partial or full): tells change() whether its block touched the kernel
        self.last_error: str | None = None
        self.last_full_sync_at: float | None = None
        self.last_full_phases: dict[str, float] = {}  # seconds of the last full sync by phase
        self.forwards_in_kernel: int | None = None
        self.external_address: ipaddress.IPv4Address | None = (
            None if cfg.external_address == "auto" else ipaddress.IPv4Address(cfg.external_address)
        )
        self.local_addresses: frozenset[ipaddress.IPv4Address] = frozenset()
        self._problems: dict[str, GatewayProblem] = {}
        self._problems_lock = threading.Lock()

    # --- the sync entry point ----------------------------------------------------------------------------------
    def sync(self, change: RuleChange | None = None, *, desired: DesiredRules | None = None) -> str:
        """Make the kernel match the desired state; returns "partial", "full" or "none" (no kernel here).

        With a change and a clean gateway, only the change's elements are applied. On a dirty gateway (or without
        a change) the whole table is rendered from `desired` (default: the committed state). A refused change is
        retried once after a full sync from the committed state; refused again, ChangeRefused is raised and the
        gateway stays in sync. Callers hold `lock`. Raises DataplaneError when the kernel cannot be brought in
        sync; the gateway is then marked for a full sync."""
        if self.kernel is None:
            self.needs_full = False
            return "none"
        rows = getattr(self.source, "enabled_rows", None)
        committed: DesiredRules = ((lambda _ext: rows(self.cfg.name)) if rows is not None
                                   else (lambda ext: self.source.enabled_rules(self.cfg.name, ext)))
        if change is None or self.needs_full:
            self._full(desired or committed)
            return "full"
        try:
            self._partial(change)
            return "partial"
        except DataplaneError:
            log.warning("event=partial_sync_failed gateway=%s action=full_sync", self.cfg.name)
        # An nft batch is all or nothing, so the kernel is as it was. Either it had drifted from the committed
        # state (an element deleted or added by hand), or the kernel refuses this change itself. Re-sync from the
        # committed state, then try the change once more: refused again, it is the change, and it alone is
        # refused - the gateway stays in sync and every other forward keeps working.
        self._full(committed)
        try:
            self._partial(change)
        except DataplaneError as exc:
            self.needs_full = False
            self.last_error = None
            raise ChangeRefused(str(exc)) from None
        return "partial"

    def _partial(self, change: RuleChange) -> None:
        assert self.kernel is not None
        batch = render_changes(self.shape(), change.remove, change.add)
        started = time.perf_counter()
        if batch:
            try:
                self.kernel.apply(batch)
            except KernelError as exc:
                self._failed("partial", str(exc), batch)
        self._synced("partial", started)
        if self.forwards_in_kernel is not None:
            self.forwards_in_kernel += len(change.add) - len(change.remove)

    def _full(self, desired: DesiredRules) -> None:
        assert self.kernel is not None
        started = time.perf_counter()
        self.refresh_addresses()
        shape = self.shape()
        t_load = time.perf_counter()
        try:
            rules = as_rows(desired(shape.external_address))
            t_render = time.perf_counter()
            main = render_gateway_parts(shape, rules)
        except Exception as exc:  # noqa: BLE001 - e.g. the database is briefly unavailable, a malformed row
            self._failed("full", f"loading forwards: {exc}")
        ids = [r[0] for r in rules]
        count = len(rules)
        del rules  # the rows are rendered: not held while nft runs (at 50,000 forwards ~10 MiB)
        t_apply = time.perf_counter()
        try:
            try:
                # Counters live in their own table: repaired in place (their counts kept); only if that is refused
                # (a set of the wrong type, say) is the counters table rebuilt from zero. Parts, not one joined
                # string: a whole table is not copied again.
                self.kernel.apply([*main, render_usage_ensure(shape, ids)], large=True)
            except KernelError:
                self.kernel.apply([*main, render_usage_table(shape, ids)], large=True)
        except KernelError as exc:
            self._failed("full", str(exc), main)
        self.needs_full = False
        self.last_error = None
        self.last_full_sync_at = time.time()
        self.forwards_in_kernel = count
        RULES.labels(self.cfg.name).set(count)
        elapsed = self._synced("full", started)
        done = time.perf_counter()
        # Where the time went (the bench reads these; the log line says it for an operator).
        self.last_full_phases = {"addresses_s": t_load - started, "load_s": t_render - t_load,
                                 "render_s": t_apply - t_render, "apply_s": done - t_apply}
        log.info("event=full_sync gateway=%s forwards=%d seconds=%.3f load=%.3f render=%.3f apply=%.3f",
                 self.cfg.name, count, elapsed, t_render - t_load, t_apply - t_render, done - t_apply)

    def _synced(self, kind: str, started: float) -> float:
        elapsed = time.perf_counter() - started
        self.syncs += 1
        SYNC_SECONDS.labels(self.cfg.name, kind).observe(elapsed)
        LAST_SYNC.labels(self.cfg.name).set(time.time())
        return elapsed

    def _failed(self, kind: str, error: str, batch: str | list[str] | None = None) -> None:
        """The one place a failed sync is recorded: dirty, status, metrics, a log line once per distinct error."""
        previous, self.last_error = self.last_error, error
        self.needs_full = True
        SYNC_FAILURES.labels(self.cfg.name, kind).inc()
        if error != previous:
            log.error("event=sync_failed gateway=%s kind=%s error=%r", self.cfg.name, kind, error)
        if batch is not None and log.isEnabledFor(logging.DEBUG):
            text = batch if isinstance(batch, str) else "".join(batch)
            log.debug("event=sync_refused_batch gateway=%s batch=%r", self.cfg.name, text[:20000])
        raise DataplaneError(error)

    # --- addresses -------------------------------------------------------------------------------------------
    def refresh_addresses(self) -> None:
        """Learn the namespace's own addresses (targets may not be one) and, for "auto", the external address."""
        if self.kernel is None:
            return
        try:
            local, preferred = self.kernel.read_addresses()
        except KernelError as exc:
            self._failed("full", str(exc))
        self.local_addresses = frozenset(local)
        if self.cfg.external_address == "auto":
            if preferred is None:
                self._failed("full", "external_address is 'auto' but the namespace has no global IPv4 address")
            self.external_address = preferred

    def shape(self) -> GatewayShape:
        if self.external_address is None:
            raise DataplaneError(self.last_error or "the gateway's external address is not known yet")
        return GatewayShape(self.cfg.table_name, self.external_address, tuple(self.cfg.ranges), self.cfg.masquerade)

    # --- reads and side effects off the sync path --------------------------------------------------------------
    def cut(self, marks: Iterable[int]) -> None:
        """Delete the conntrack entries of these forward ids (established sessions through them stop). Callers do
        it after their commit and outside the gateway lock: the kernel walks the whole conntrack hash for it (an
        in-process ctnetlink delete filtered by mark, ~1.3 ms with 10,000 entries). A failure is logged, not raised: the rule change is already committed."""
        marks = sorted(set(marks))
        if self.kernel is None or not marks or self.closed:
            return
        try:
            self.kernel.cut(marks)
        except KernelError as exc:
            log.error("event=conntrack_failed gateway=%s marks=%s error=%r", self.cfg.name, marks, str(exc))

    def cut_stale(self) -> int:
        """Cut tracked connections through this gateway that the committed state no longer explains: a forward
        deleted, disabled or retargeted while its sessions were not cut (the process died between the commit and
        the cut, or conntrack failed). Only connections labgate translated count: to the external address, on a
        port of the gateway's ranges, with a mark. Returns how many were cut; failures are logged."""
        if self.kernel is None or self.external_address is None:
            return 0
        ext = str(self.external_address)
        try:
            # Only connections to the external address come out of the kernel (a filtered dump).
            conns = [c for c in self.kernel.connections(to=ext)
                     if c.dst == ext and any(lo <= c.dport <= hi for lo, hi in self.cfg.ranges)]
            if not conns:
                return 0
            # As rows (tuples), not rule objects: 50,000 ForwardRule objects took ~0.35 s here after each full sync.
            rows = getattr(self.source, "enabled_rows", None)
            rules = {r[0]: r for r in (rows(self.cfg.name) if rows is not None else
                                       (rule.row() for rule in self.source.enabled_rules(self.cfg.name,
                                                                                         self.external_address)))}
        except (KernelError, Exception) as exc:  # noqa: BLE001 - a repair pass must not break the loop
            log.error("event=stale_cut_failed gateway=%s error=%r", self.cfg.name, str(exc))
            return 0
        stale = [c for c in conns if not _explains(rules.get(c.mark), c)]
        for conn in stale:
            try:
                self.kernel.cut_connection(conn)
            except KernelError as exc:
                log.error("event=stale_cut_failed gateway=%s mark=%d error=%r", self.cfg.name, conn.mark, str(exc))
        if stale:
            log.warning("event=stale_connections_cut gateway=%s count=%d marks=%s", self.cfg.name, len(stale),
                        sorted({c.mark for c in stale}))
        return len(stale)

    def check_tables(self) -> tuple[bool, bool]:
        """Drift check: (forwarding table intact, usage table intact), without the gateway lock. Netlink dumps of
        the tables' chains and rules and single-element lookups: no set is listed, so the cost does not grow with
        the forwards (an nft listing took about a second at 50,000). A change in flight never removes chains or rules. The
        sentinel elements of the big sets are asked about first (microseconds each): a flushed map is found at
        the next pass, not at the next periodic full render."""
        if self.kernel is None:
            return True, True
        if self.external_address is None:
            return False, False
        shape = self.shape()
        expected = dict(CHAINS)
        if not self.cfg.masquerade:
            expected["postrouting"] = 0
        try:
            main = (all(self.kernel.has_element(shape.table, s) for s in SENTINELS)
                    and self.kernel.table_shape(shape.table) == expected)
            return main, self.kernel.table_shape(shape.usage_table) == USAGE_CHAINS
        except KernelError:
            return False, False

    def read_usage(self, *, nonzero: bool = False) -> dict[int, tuple[int, int, int]]:
        """{forward id: (connections, packets, bytes)} from the kernel counters (with `nonzero`: only forwards
        that counted something; at 50,000 idle forwards the full answer was ~20 MiB of tuples). Raises
        DataplaneError."""
        if self.kernel is None or self.external_address is None:
            return {}
        table = self.shape().usage_table
        try:
            counts = {name: self.kernel.read_counters(table, name, nonzero=nonzero) for name in USAGE_SETS}
        except KernelError as exc:
            raise DataplaneError(str(exc)) from None
        return {i: (counts["conns"].get(i, (0, 0))[0],) + counts["traffic"].get(i, (0, 0))
                for i in counts["traffic"].keys() | counts["conns"].keys()}

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
        if self.kernel is None:
            return
        run = f"ip netns exec {self.cfg.netns} " if self.cfg.netns else ""
        fix = (f"{run}sysctl -w net.ipv4.ip_forward=1 (or set enable_forwarding = true in gateway "
               f"{self.cfg.name!r}'s config)")
        try:
            forwarding = self.kernel.ip_forward(self.cfg.manages_forwarding)
        except KernelError as exc:
            self.set_problem("forwarding", f"cannot read or turn on net.ipv4.ip_forward: {exc}", fix)
            FORWARDING.labels(self.cfg.name).set(0)
            return
        FORWARDING.labels(self.cfg.name).set(1 if forwarding else 0)
        if forwarding:
            self.set_problem("forwarding", None)
        else:
            where = f"namespace {self.cfg.netns!r}" if self.cfg.netns else "the host's namespace"
            self.set_problem("forwarding", f"net.ipv4.ip_forward is 0 in {where}: forwards are in place but no "
                             "packet is forwarded", fix)

    def health(self) -> GatewayHealth:
        problems = self.problems()
        if self.kernel is None:
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
        self.closed = True
        if self.kernel is not None:
            self.kernel.close()


def _explains(row: RuleRow | None, conn: Connection) -> bool:
    """Does this (enabled) forward's rule, as a row, translate this connection the way it was translated?"""
    if row is None:
        return False
    _id, protocol, external_port, port_count, target_address, target_port, _sources = row
    if protocol != conn.protocol:
        return False
    offset = conn.dport - external_port
    return (0 <= offset < port_count and conn.reply_src == str(target_address)
            and conn.reply_sport == target_port + offset)


class Dataplane:
    """All gateways of this process, and the loop that keeps each one equal to the database."""

    def __init__(self, gateways: list[GatewayConfig], source: RulesSource, *, kernels: KernelFactory | None,
                 interval: float = 30.0, full_interval: float | None = 600.0) -> None:
        self.source = source
        self.kernels = kernels
        # Replaced, never changed in place (copy on write): readers iterate it without a lock while gateways come
        # and go at run time (OpenStack routers).
        self.gateways: dict[str, GatewayDataplane] = {
            g.name: GatewayDataplane(g, kernels(g) if kernels else None, source) for g in gateways}
        self._gateways_lock = threading.Lock()
        self._listeners: list[Callable[[str, GatewayDataplane], None]] = []
        self.interval = interval
        self.full_interval = full_interval
        self._loop = Periodic("reconcile", self._next_wait, self.reconcile_once, logger=log,
                              failure_event="reconcile_crashed")

    def get(self, name: str) -> GatewayDataplane | None:
        return self.gateways.get(name)

    # --- gateways that come and go at run time ----------------------------------------------------------------
    def on_gateway(self, listener: Callable[[str, GatewayDataplane], None]) -> None:
        """Call `listener("added" | "changed" | "removed", gateway)` after each such change (workers that run one
        per gateway follow this way)."""
        self._listeners.append(listener)

    def put_gateway(self, cfg: GatewayConfig) -> GatewayDataplane:
        """Add a gateway, or give an existing one its new config (addresses, ranges, target networks); the kernel
        follows at the next pass (woken now). Returns its GatewayDataplane."""
        with self._gateways_lock:
            gw = self.gateways.get(cfg.name)
            if gw is None:
                gw = GatewayDataplane(cfg, self.kernels(cfg) if self.kernels else None, self.source)
                self.gateways = {**self.gateways, cfg.name: gw}
                what = "added"
            elif gw.cfg == cfg:
                return gw
            else:
                with gw.lock:
                    if gw.cfg.netns != cfg.netns:
                        raise ValueError(f"gateway {cfg.name!r} cannot move to another namespace")
                    gw.cfg = cfg
                    if cfg.external_address != "auto":
                        gw.external_address = ipaddress.IPv4Address(cfg.external_address)
                    gw.needs_full = True
                what = "changed"
        log.info("event=gateway_%s gateway=%s netns=%s", what, cfg.name, cfg.netns or "-")
        self._tell(what, gw)
        self._loop.trigger()
        return gw

    def remove_gateway(self, name: str, *, drop_table: bool = True) -> None:
        """Stop serving a gateway: its table is removed from the kernel (when `drop_table` and the namespace is
        still there) and it is forgotten. Its forwards stay in the database."""
        with self._gateways_lock:
            gw = self.gateways.get(name)
            if gw is None:
                return
            self.gateways = {k: v for k, v in self.gateways.items() if k != name}
        with gw.lock:
            if drop_table and gw.kernel is not None:
                try:
                    gw.kernel.apply(render_drop_tables(gw.cfg.table_name))
                except KernelError as exc:
                    log.info("event=gateway_table_not_dropped gateway=%s reason=%r", name, str(exc))
            gw.close()
        log.info("event=gateway_removed gateway=%s", name)
        self._tell("removed", gw)

    def _tell(self, what: str, gw: GatewayDataplane) -> None:
        for listener in self._listeners:
            try:
                listener(what, gw)
            except Exception:  # noqa: BLE001 - a listener's failure must not undo the change
                log.exception("event=gateway_listener_failed gateway=%s", gw.cfg.name)

    @contextmanager
    def change(self, name: str) -> Iterator[GatewayDataplane]:
        """Hold gateway `name`'s lock for "sync the kernel, then commit". If the block raises after the kernel was
        changed (the commit failed), the gateway is synced back to the committed state before the error goes on."""
        gw = self.gateways.get(name)
        if gw is None:
            raise DataplaneError(f"gateway {name!r} was removed")
        with gw.lock:
            if gw.closed or gw.retiring:  # removed (or being removed) while this caller waited for its lock
                raise DataplaneError(f"gateway {name!r} was removed")
            before = gw.syncs
            try:
                yield gw
            except BaseException:
                if gw.syncs != before:
                    gw.needs_full = True
                    self.reconcile_gateway(gw)
                raise

    def reconcile_gateway(self, gw: GatewayDataplane) -> bool:
        """Full sync if dirty, drifted or due; then the forwarding check. True if in sync afterwards."""
        if gw.kernel is None:  # no dataplane in this process (serve --no-agent): nothing to keep in sync
            gw.needs_full = False
            return True
        if gw.closed:  # removed since this pass read the gateways: its table was dropped on purpose
            return True
        if (self.full_interval is not None and gw.last_full_sync_at is not None
                and time.time() - gw.last_full_sync_at >= self.full_interval):
            # The structure check cannot see one element deleted by hand; a periodic full render can.
            gw.needs_full = True
        if not gw.needs_full and not all(gw.check_tables()):  # outside the lock: slow at 50,000 forwards
            log.warning("event=drift gateway=%s action=full_sync", gw.cfg.name)
            DRIFT_REPAIRS.labels(gw.cfg.name).inc()
            gw.needs_full = True
        synced = False
        with gw.lock:
            if gw.closed:
                return True
            if gw.needs_full:
                try:
                    gw.sync()
                    synced = True
                except DataplaneError:
                    return False
        if synced:
            gw.cut_stale()  # after a restart or a failure: sessions a lost cut left running
        if not gw.closed:
            gw.check_forwarding()
        return True

    def reconcile_once(self) -> bool:
        return all([self.reconcile_gateway(gw) for gw in self.gateways.values()])

    def request_full_sync(self, name: str) -> None:
        """Mark a gateway dirty and wake the loop now."""
        gw = self.gateways.get(name)
        if gw is not None:
            gw.needs_full = True
        self._loop.trigger()

    def _next_wait(self) -> float:
        # Retry sooner while something is broken; otherwise wait the interval (or a wake-up).
        return min(self.interval, 2.0) if any(gw.needs_full for gw in self.gateways.values()) else self.interval

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop(10)
        for gw in self.gateways.values():
            gw.close()
