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
import os
import shutil
import subprocess
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Protocol, Sequence, TypeVar

from labgate.dataplane import conntrack, ctnetlink, nfnetlink, nftsets
from labgate.dataplane.netns import NamespaceError, NamespaceWorker
from labgate.dataplane.nft import NFT_BINARY, NftError, NftProcess, NftRunner, open_runner, parse_json
from labgate.dataplane.render import Sentinel

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

    def apply(self, batch: str | Sequence[str], *, large: bool = False) -> None:
        """Run one nft batch atomically (a text, or parts of one text in order); `large` for a whole table.
        Raises KernelError with nft's reason when refused; the kernel is then unchanged."""
        ...

    def table_shape(self, table: str) -> dict[str, int] | None:
        """{chain name: number of rules} of `table`, or None when the table does not exist."""
        ...

    def read_counters(self, table: str, set_name: str, *, nonzero: bool = False) -> dict[int, tuple[int, int]]:
        """{element: (packets, bytes)} of a counter set (with `nonzero`: only elements that counted something)."""
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

    def connections(self, to: str | None = None) -> list[conntrack.Connection]:
        """Every tracked TCP/UDP connection that carries a mark (with `to`: whose original destination is that
        address)."""
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


def parse_table_shape(output: str) -> dict[str, int]:
    """`nft -j -t list table` output -> {chain: rule count} (what NamespaceKernel.table_shape reads over netlink;
    tests compare the two)."""
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

    The writer thread applies small batches with a long-lived libnftables context (re-opened when the namespace is
    re-created) and whole tables with a child `nft -f -` (see apply). The reader thread does what may be slow
    without delaying changes, all over netlink in-process: reading counters (one set-element dump, parsed as it
    arrives), cutting conntrack entries (a ctnetlink flush filtered by mark: the kernel walks the conntrack hash,
    ~1.3 ms with 10,000 entries), and the drift check's requests (one element, a table's chains and rules: no
    listing of sets)."""

    def __init__(self, netns: str, runner_factory: Callable[[], NftRunner] = open_runner,
                 large_runner_factory: Callable[[], NftRunner] | None = None) -> None:
        self.netns = netns
        self._runner_factory = runner_factory
        if large_runner_factory is None:
            # The nft program when it is installed (the nftables package has it); else the same runner as small
            # batches, in a fresh context each time.
            large_runner_factory = NftProcess if shutil.which("nft") or os.path.exists(NFT_BINARY) \
                else runner_factory
        self._large_runner_factory = large_runner_factory
        self._runner: NftRunner | None = None
        self._runner_generation = -1
        self._writer = NamespaceWorker(netns)
        self._reader = NamespaceWorker(netns)
        self._ct_sock: ctnetlink.CtnetlinkSocket | None = None
        self._ct_generation = -1

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

    def apply(self, batch: str | Sequence[str], *, large: bool = False) -> None:
        parts = [batch] if isinstance(batch, str) else list(batch)

        def job() -> None:
            if large:
                # A whole table (a full sync, a restore): the nft program in a child process, forked from this
                # thread and so inside the gateway's namespace. libnftables in-process took ~200 MiB for 50,000
                # forwards (its parser's and cache's allocations) and glibc kept most of it after nft_ctx_free;
                # a child's memory goes back to the system when it exits. Costs one fork/exec (~5 ms).
                runner = self._large_runner_factory()
                try:
                    run_parts = getattr(runner, "run_parts", None)
                    if run_parts is not None:
                        run_parts(parts)  # no joined copy of a whole table
                    else:
                        runner.run("".join(parts))
                finally:
                    runner.close()
                    release_memory()
                return
            self._writer_runner().run(parts[0] if len(parts) == 1 else "".join(parts))

        self._call(self._writer, job, "applying change")

    def table_shape(self, table: str) -> dict[str, int] | None:
        # Netlink dumps of the table's chains and rules (nfnetlink.table_shape): no set element is listed, so the
        # cost does not grow with the forwards (an nft terse listing took ~1 s at 50,000).
        return self._call(self._reader, lambda: nfnetlink.table_shape(table), "checking tables")

    def has_element(self, table: str, element: Sentinel) -> bool:
        return self._call(self._reader, lambda: nfnetlink.element_exists(table, element.set_name, element.raw),
                          "checking an element")

    def read_counters(self, table: str, set_name: str, *, nonzero: bool = False) -> dict[int, tuple[int, int]]:
        # One NFT_MSG_GETSETELEM dump parsed as it arrives (nftsets.py): a libnftables JSON listing of 50,000
        # elements took ~200 MiB of peak memory and seconds of parsing for the same numbers.
        return self._call(self._reader, lambda: nftsets.read_counter_set(table, set_name, nonzero=nonzero),
                          "reading counters")

    def read_addresses(self) -> Addresses:
        return self._call(self._writer, read_namespace_addresses, "reading addresses")

    def _reader_ctnetlink(self) -> ctnetlink.CtnetlinkSocket:
        # Inside the reader thread: one socket kept open (re-opened after the thread re-entered a re-created
        # namespace, or after a failure). Closing a netlink socket in a busy server took ~11 ms (the socket's
        # release waits for the kernel), ten times the filtered flush itself: a delete paid it every time.
        sock = self._ct_sock
        if sock is None or self._ct_generation != self._reader.generation:
            if sock is not None:
                sock.close()
            self._ct_sock = None
            sock = ctnetlink.CtnetlinkSocket()
            self._ct_sock, self._ct_generation = sock, self._reader.generation
        return sock

    def cut(self, marks: list[int]) -> None:
        def job() -> None:
            try:
                conntrack.delete_by_marks(marks, sock=self._reader_ctnetlink())
            except BaseException:
                # A socket that failed mid-answer may hold stale replies: the next cut opens a fresh one.
                if self._ct_sock is not None:
                    self._ct_sock.close()
                    self._ct_sock = None
                raise

        self._call(self._reader, job, "cutting open connections")

    def connections(self, to: str | None = None) -> list[conntrack.Connection]:
        if to is not None:
            return self._call(self._reader, lambda: conntrack.list_marked_to(to), "listing connections")
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
        # The libnftables context and the ctnetlink socket are closed in the thread (namespace) that made them.
        for worker, thing in ((self._writer, self._runner), (self._reader, self._ct_sock)):
            if thing is not None:
                try:
                    worker.run(thing.close, timeout=5)
                except Exception:  # noqa: BLE001 - closing on shutdown must not raise
                    pass
        self._ct_sock = None
        self._writer.close()
        self._reader.close()
