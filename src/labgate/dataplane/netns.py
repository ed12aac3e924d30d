"""Run work inside a network namespace: one dedicated thread per namespace that entered it with setns(2).

A thread's network namespace is its own (the rest of the process stays where it is), so everything a job does in
that thread - libnftables' netlink socket, a conntrack child process, a probe socket - happens in the namespace.
If the namespace is deleted and created again (an L3 agent rebuilding qrouter-*), `ensure_current` notices the new
inode and enters the new one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class NamespaceError(RuntimeError):
    """The namespace cannot be entered (missing, or not permitted)."""


def netns_path(name: str) -> str:
    """The file naming namespace `name`; "" is the namespace this process runs in (not pid 1's: that one may be
    another namespace, and in a container or for a process without CAP_SYS_PTRACE it cannot even be read)."""
    return os.path.join(NETNS_DIR, name) if name else "/proc/self/ns/net"


def netns_inode(name: str) -> int | None:
    """The namespace's identity now, or None when it does not exist."""
    try:
        return os.stat(netns_path(name)).st_ino
    except OSError:
        return None


def enter(name: str) -> None:
    """Move the calling thread into namespace `name` ("" = stay). For long-running threads of their own."""
    if name:
        _setns(netns_path(name))


def _setns(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NamespaceError(f"network namespace {path} cannot be opened: {exc.strerror}") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NamespaceError(f"setns({path}) failed: {os.strerror(err)}")
    finally:
        os.close(fd)


class NamespaceWorker:
    """A single thread living in namespace `name` ("" = the namespace this process started in).

    Jobs run one at a time in submission order, so callers get serialization for free.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netns-{name or 'host'}")
        self._entered_inode: int | None = None
        self._local = threading.local()
        # The host namespace of *this process* (not pid 1's: inside a container or a test namespace they differ).
        self._home = os.open(f"/proc/{os.getpid()}/ns/net", os.O_RDONLY | os.O_CLOEXEC) if not name else None

    def _enter(self) -> None:
        if self.name:
            inode = netns_inode(self.name)
            if inode is None:
                self._entered_inode = None
                raise NamespaceError(f"network namespace {self.name!r} does not exist")
            _setns(netns_path(self.name))
            self._entered_inode = inode
        else:
            self._entered_inode = os.fstat(self._home).st_ino if self._home is not None else None
        self._local.generation = getattr(self._local, "generation", 0) + 1

    def _ensure(self) -> None:
        if not self.name:
            if self._entered_inode is None:
                self._enter()
            return
        if self._entered_inode is None or netns_inode(self.name) != self._entered_inode:
            self._enter()

    @property
    def generation(self) -> int:
        """Bumped each time the thread (re)enters its namespace; per-thread state keyed on it must be rebuilt."""
        return getattr(self._local, "generation", 0)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        def job() -> T:
            self._ensure()
            return fn()

        return self._pool.submit(job)

    def run(self, fn: Callable[[], T], timeout: float | None = 60) -> T:
        """Run fn in the namespace and return its result (its exception is raised here)."""
        return self.submit(fn).result(timeout=timeout)

    def exists(self) -> bool:
        return not self.name or netns_inode(self.name) is not None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._home is not None:
            os.close(self._home)
            self._home = None
