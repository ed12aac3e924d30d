"""The kernel side of one gateway behind one small interface: run an nft batch, read back what the sync and the
usage collector need, cut conntrack entries, read the namespace's addresses and its ip_forward switch.

`NamespaceKernel` does it for real inside the gateway's network namespace; `dataplane/fake.py` does it in memory for
unit and API tests. Every method raises `KernelError` (one line, says why) and nothing else.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import json
import subprocess
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Protocol, TypeVar

from labgate.dataplane import conntrack, nfnetlink
from labgate.dataplane.netns import NamespaceError, NamespaceWorker
from labgate.dataplane.nft import NftError, NftRunner, open_runner, parse_json
from labgate.dataplane.render import Sentinel, render_check, render_list_set

T = TypeVar("T")
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_FAILURES = (NftError, NamespaceError, conntrack.ConntrackUnavailable, OSError, subprocess.SubprocessError,
             FutureTimeout, ValueError)


class KernelError(RuntimeError):
    """The kernel refused a batch (it is then unchanged), or the namespace or a tool could not be reached."""


Addresses = tuple[list[ipaddress.IPv4Address], "ipaddress.IPv4Address | None"]


class GatewayKernel(Protocol):
    """What the dataplane needs from one gateway's namespace."""

    def apply(self, batch: str, *, large: bool = False) -> None:
        """Run one nft batch atomically; `large` after a full render (caches are released afterwards).
        Raises KernelError with nft's reason when refused; the kernel is then unchanged."""
        ...

    def table_shape(self, table: str) -> dict[str, int] | None:
        """{chain name: number of rules} of `table`, or None when the table does not exist."""
        ...

    def read_counters(self, table: str, set_name: str) -> dict[int, tuple[int, int]]:
        """{element: (packets, bytes)} of a counter set."""
        ...

    def has_element(self, table: str, element: Sentinel) -> bool:
        """Is this one element in its set (without listing the set)? False when the set or table is missing."""
        ...

    def read_addresses(self) -> Addresses:
        """All IPv4 addresses of the namespace, and the default route's preferred one (None if no route)."""
        ...

    def cut(self, marks: list[int]) -> None:
        """Delete the conntrack entries carrying these marks (established sessions through them stop)."""
        ...

    def ip_forward(self, enable: bool) -> bool:
        """Is net.ipv4.ip_forward on? With enable, turn it on first when it is off."""
        ...

    def connections(self) -> list[conntrack.Connection]:
        """Every tracked TCP/UDP connection that carries a mark."""
        ...

    def cut_connection(self, conn: conntrack.Connection) -> None:
        """Delete this one conntrack entry."""
        ...

    def close(self) -> None:
        ...


def release_memory() -> None:
    """Give freed heap back to the system (glibc keeps it otherwise): after a big render or listing."""
    try:
        _libc.malloc_trim(0)
    except AttributeError:  # not glibc
        pass


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


def parse_table_shape(output: str) -> dict[str, int]:
    """`nft -j -t list table` output -> {chain: rule count}."""
    shape: dict[str, int] = {}
    rules: list[str] = []
    for item in parse_json(output):
        if "chain" in item:
            shape.setdefault(item["chain"]["name"], 0)
        elif "rule" in item:
            rules.append(item["rule"].get("chain"))
    for chain in rules:
        if chain in shape:
            shape[chain] += 1
    return shape


def read_namespace_addresses() -> Addresses:
    """All IPv4 addresses of the calling thread's namespace, and the default route's preferred one."""
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


class NamespaceKernel:
    """The real kernel of one gateway: two threads that entered its namespace (see netns.py).

    The writer thread applies batches with a long-lived libnftables context (re-opened when the namespace is
    re-created). The reader thread does what may be slow without delaying changes: listings (nft 1.0.6 fetches
    every element even for a terse listing, ~1 s at 50,000 forwards), counters, `conntrack -D` (walks the whole
    conntrack hash); each listing uses a fresh context, released afterwards (a listing of 50,000 elements leaves
    100-200 MiB in a context's cache otherwise)."""

    def __init__(self, netns: str, runner_factory: Callable[[], NftRunner] = open_runner) -> None:
        self.netns = netns
        self._runner_factory = runner_factory
        self._runner: NftRunner | None = None
        self._runner_generation = -1
        self._writer = NamespaceWorker(netns)
        self._reader = NamespaceWorker(netns)

    @staticmethod
    def _call(worker: NamespaceWorker, fn: Callable[[], T], what: str) -> T:
        try:
            return worker.run(fn)
        except _FAILURES as exc:
            raise KernelError(f"{what}: {exc}".splitlines()[0] if str(exc) else what) from exc

    def _writer_runner(self) -> NftRunner:
        # Inside the writer thread. A netlink socket belongs to the namespace it was opened in: re-open after
        # the thread re-entered a re-created namespace.
        if self._runner is None or self._runner_generation != self._writer.generation:
            if self._runner is not None:
                self._runner.close()
            self._runner = self._runner_factory()
            self._runner_generation = self._writer.generation
        return self._runner

    def apply(self, batch: str, *, large: bool = False) -> None:
        def job() -> None:
            try:
                self._writer_runner().run(batch)
            finally:
                if large and self._runner is not None:
                    # A context that rendered 50,000 elements keeps them cached: start the next one fresh.
                    self._runner.close()
                    self._runner = None
                    release_memory()

        self._call(self._writer, job, "applying change")

    def _listing(self, fn: Callable[[NftRunner], T], what: str) -> T:
        def job() -> T:
            runner = self._runner_factory()
            try:
                return fn(runner)
            finally:
                runner.close()
                release_memory()

        return self._call(self._reader, job, what)

    def table_shape(self, table: str) -> dict[str, int] | None:
        def read(runner: NftRunner) -> dict[str, int] | None:
            try:
                return parse_table_shape(runner.run(render_check(table), json=True, terse=True))
            except NftError:
                return None  # no such table

        return self._listing(read, "checking tables")

    def has_element(self, table: str, element: Sentinel) -> bool:
        return self._call(self._reader, lambda: nfnetlink.element_exists(table, element.set_name, element.raw),
                          "checking an element")

    def read_counters(self, table: str, set_name: str) -> dict[int, tuple[int, int]]:
        return self._listing(lambda r: parse_counters(r.run(render_list_set(table, set_name), json=True)),
                             "reading counters")

    def read_addresses(self) -> Addresses:
        return self._call(self._writer, read_namespace_addresses, "reading addresses")

    def cut(self, marks: list[int]) -> None:
        self._call(self._reader, lambda: conntrack.delete_by_marks(marks), "cutting open connections")

    def connections(self) -> list[conntrack.Connection]:
        return self._call(self._reader, conntrack.list_marked, "listing connections")

    def cut_connection(self, conn: conntrack.Connection) -> None:
        self._call(self._reader, lambda: conntrack.delete_connection(conn), "cutting a connection")

    def ip_forward(self, enable: bool) -> bool:
        def job() -> bool:
            # /proc/sys/net is the namespace of the thread that opens it: this one lives in the gateway's.
            with open(IP_FORWARD) as f:
                if f.read().strip() != "0":
                    return True
            if not enable:
                return False
            with open(IP_FORWARD, "w") as f:
                f.write("1")
            return True

        return self._call(self._writer, job, "checking net.ipv4.ip_forward")

    def close(self) -> None:
        runner = self._runner
        if runner is not None:
            try:
                self._writer.run(runner.close, timeout=5)
            except Exception:  # noqa: BLE001 - closing on shutdown must not raise
                pass
        self._writer.close()
        self._reader.close()
