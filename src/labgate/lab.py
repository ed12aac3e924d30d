"""A throwaway lab made of Linux network namespaces, for the kernel tests and `labgate demo`.

    client ns (prefix-cli)            gateway ns (prefix-gw)             lab ns (prefix-lab)
    cli0 198.51.100.2/24  <--veth-->  ext0 198.51.100.1/24
         198.51.100.3/24              int0 10.9.0.1/24      <--veth-->  lab0 10.9.0.5/24, 10.9.0.6/24
    (no route to 10.9.0.0/24)         ip_forward=1                      default via 10.9.0.1

The lab machines are addresses on one interface of the lab namespace; a `Service` bound to one of them answers
with that address as its tag, so a test can tell which machine answered.  Nothing is created in the host's own
namespace: every veth is created directly inside the lab's namespaces, and removing the namespaces removes them.

Standard library only.  Needs root (CAP_SYS_ADMIN) and `ip` (iproute2).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

__all__ = [
    "Lab", "LabError", "Service", "TcpSession", "create_lab", "destroy_lab", "destroy_labs", "list_labs",
    "netns_exec", "remove_namespace", "tcp_request", "udp_request", "in_netns",
]

T = TypeVar("T")

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MARKER = "labgate-lab"          # ifalias set on `lo` of every namespace this module creates
MAX_PREFIX = 11                 # so that f"{prefix}-cli" stays within 15 characters
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ROLES = ("cli", "gw", "lab")

# Interface names inside the namespaces (each namespace has its own name space for interfaces).
CLIENT_IF, GW_EXT_IF, GW_LAB_IF, LAB_IF = "cli0", "ext0", "int0", "lab0"


class LabError(RuntimeError):
    """Building, entering or removing a lab failed."""


# --------------------------------------------------------------------------------------------------------------
# The lab


@dataclass
class Lab:
    prefix: str
    client_ns: str
    gateway_ns: str
    lab_ns: str
    external_address: str
    client_address: str
    client_address2: str
    lab_network: str
    gateway_lab_address: str
    machine_addresses: list[str]
    external_network: str = "198.51.100.0/24"
    subnet_index: int = 0
    client_ifname: str = CLIENT_IF
    gateway_external_ifname: str = GW_EXT_IF
    gateway_lab_ifname: str = GW_LAB_IF
    lab_ifname: str = LAB_IF

    @property
    def namespaces(self) -> list[str]:
        return [self.client_ns, self.gateway_ns, self.lab_ns]


def _ip_binary() -> str:
    return shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip")


def _ip(*args: str) -> subprocess.CompletedProcess:
    """Run `ip ARGS...`; raise LabError with its message when it fails."""
    argv = [_ip_binary(), *args]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise LabError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def lab_addresses(prefix: str, subnet_index: int = 0) -> Lab:
    """The Lab description for a prefix, without building anything (also used to remove a lab by prefix)."""
    _check_prefix(prefix)
    if not 0 <= subnet_index <= 155:
        raise ValueError(f"subnet_index must be within 0..155, not {subnet_index}")
    ext = f"198.51.{100 + subnet_index}"
    lab = f"10.9.{subnet_index}"
    return Lab(
        prefix=prefix,
        client_ns=f"{prefix}-cli",
        gateway_ns=f"{prefix}-gw",
        lab_ns=f"{prefix}-lab",
        external_address=f"{ext}.1",
        client_address=f"{ext}.2",
        client_address2=f"{ext}.3",
        lab_network=f"{lab}.0/24",
        gateway_lab_address=f"{lab}.1",
        machine_addresses=[f"{lab}.5", f"{lab}.6"],
        external_network=f"{ext}.0/24",
        subnet_index=subnet_index,
    )


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix) or len(prefix) > MAX_PREFIX:
        raise ValueError(f"invalid lab prefix {prefix!r}: use 1..{MAX_PREFIX} characters of [A-Za-z0-9_.-], "
                         "not starting with '.' or '-'")


def create_lab(prefix: str | None = None, *, subnet_index: int = 0) -> Lab:
    """Build client ns <-veth-> gateway ns <-veth-> lab ns.  On any failure, remove what was built, then raise.

    A namespace that already exists is never adopted nor removed: its name is refused (LabError).
    """
    lab = lab_addresses(prefix if prefix is not None else "lg" + secrets.token_hex(3), subnet_index)
    ext_len = ipaddress.ip_network(lab.external_network).prefixlen
    lab_len = ipaddress.ip_network(lab.lab_network).prefixlen
    created: list[str] = []
    try:
        for ns in lab.namespaces:
            _ip("netns", "add", ns)      # O_EXCL: fails when the name is taken
            created.append(ns)
            _ip("-n", ns, "link", "set", "dev", "lo", "alias", f"{MARKER} {lab.prefix}")
            _ip("-n", ns, "link", "set", "dev", "lo", "up")
        # veth pairs, both ends created straight inside the namespaces (never in the host's).
        _ip("-n", lab.client_ns, "link", "add", CLIENT_IF, "type", "veth", "peer", "name", GW_EXT_IF,
            "netns", lab.gateway_ns)
        _ip("-n", lab.lab_ns, "link", "add", LAB_IF, "type", "veth", "peer", "name", GW_LAB_IF,
            "netns", lab.gateway_ns)
        # client
        _ip("-n", lab.client_ns, "addr", "add", f"{lab.client_address}/{ext_len}", "dev", CLIENT_IF)
        _ip("-n", lab.client_ns, "addr", "add", f"{lab.client_address2}/{ext_len}", "dev", CLIENT_IF)
        _ip("-n", lab.client_ns, "link", "set", "dev", CLIENT_IF, "up")
        # gateway
        _ip("-n", lab.gateway_ns, "addr", "add", f"{lab.external_address}/{ext_len}", "dev", GW_EXT_IF)
        _ip("-n", lab.gateway_ns, "addr", "add", f"{lab.gateway_lab_address}/{lab_len}", "dev", GW_LAB_IF)
        _ip("-n", lab.gateway_ns, "link", "set", "dev", GW_EXT_IF, "up")
        _ip("-n", lab.gateway_ns, "link", "set", "dev", GW_LAB_IF, "up")
        _write_sysctls(lab.gateway_ns, {"net/ipv4/ip_forward": "1"}, optional={"net/netfilter/nf_conntrack_acct": "1"})
        # lab machines
        for address in lab.machine_addresses:
            _ip("-n", lab.lab_ns, "addr", "add", f"{address}/{lab_len}", "dev", LAB_IF)
        _ip("-n", lab.lab_ns, "link", "set", "dev", LAB_IF, "up")
        _ip("-n", lab.lab_ns, "route", "add", "default", "via", lab.gateway_lab_address, "dev", LAB_IF)
    except BaseException:
        for ns in reversed(created):
            try:
                remove_namespace(ns)
            except Exception:  # noqa: BLE001 - the original error is the one worth raising
                pass
        raise
    return lab


def _write_sysctls(ns: str, required: dict[str, str], optional: dict[str, str] | None = None) -> None:
    """Write /proc/sys/<key> values inside namespace ns (optional ones only when the key exists there)."""

    def job() -> None:
        for items, must in ((required, True), ((optional or {}), False)):
            for key, value in items.items():
                path = f"/proc/sys/{key}"
                if not must and not os.path.exists(path):
                    continue
                try:
                    with open(path, "w") as f:
                        f.write(value)
                except OSError as exc:
                    if must:
                        raise LabError(f"cannot set {key}={value} in namespace {ns}: {exc.strerror}") from None

    in_netns(ns, job)


def _ns_inode(ns: str) -> tuple[int, int] | None:
    try:
        st = os.stat(os.path.join(NETNS_DIR, ns))
    except OSError:
        return None
    return st.st_dev, st.st_ino


def namespace_pids(ns: str) -> list[int]:
    """Processes whose (main thread's) network namespace is ns.  Threads of other processes that merely entered
    it with setns (like labgate's own namespace workers) are not listed."""
    ident = _ns_inode(ns)
    if ident is None or ident[1] == os.stat("/proc/self/ns/net").st_ino:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if st.st_ino == ident[1] and st.st_dev == ident[0]:
            pids.append(int(entry))
    return pids


def remove_namespace(ns: str, *, kill_processes: bool = True) -> None:
    """Delete one namespace; nothing happens when it is already gone.  With kill_processes, processes running
    inside it (left-over services) are killed first, since they would keep it - and its veths - alive."""
    if kill_processes:
        for pid in namespace_pids(ns):
            if pid in (os.getpid(), 1):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    last = ""
    for attempt in range(5):
        if not os.path.lexists(os.path.join(NETNS_DIR, ns)):
            return
        proc = subprocess.run([_ip_binary(), "netns", "delete", ns], capture_output=True, text=True)
        if proc.returncode == 0 or not os.path.lexists(os.path.join(NETNS_DIR, ns)):
            return
        last = proc.stderr.strip()
        time.sleep(0.05 * (attempt + 1))
    raise LabError(f"cannot remove network namespace {ns}: {last}")


def destroy_lab(lab: Lab, *, kill_processes: bool = True) -> None:
    """Remove the lab's namespaces (and so its veths).  Idempotent; raises only when a namespace that still
    exists cannot be removed."""
    errors = []
    for ns in lab.namespaces:
        try:
            remove_namespace(ns, kill_processes=kill_processes)
        except LabError as exc:
            errors.append(str(exc))
    if errors:
        raise LabError("; ".join(errors))


def _has_marker(ns: str) -> bool | None:
    """True/False whether lo carries this module's marker; None when the namespace cannot be entered."""
    proc = subprocess.run([_ip_binary(), "-n", ns, "-j", "link", "show", "dev", "lo"], capture_output=True, text=True)
    if proc.returncode:
        return None
    try:
        links = json.loads(proc.stdout or "[]")
    except ValueError:
        return None
    return any(str(link.get("ifalias", "")).startswith(MARKER) for link in links)


def list_labs(prefix_start: str = "lg") -> list[str]:
    """Names of namespaces this module created (and not yet removed) whose name starts with prefix_start.

    A namespace qualifies when its name has the shape `<prefix>-cli|gw|lab` and its loopback carries the marker
    set by create_lab (or it can no longer be entered at all: a stale leftover).  Sorted.
    """
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return []
    shape = re.compile(rf"^{re.escape(prefix_start)}[A-Za-z0-9_.-]*-({'|'.join(_ROLES)})$")
    return sorted(n for n in names if shape.match(n) and _has_marker(n) is not False)


def destroy_labs(prefix_start: str = "lg") -> list[str]:
    """Remove every namespace list_labs(prefix_start) reports; returns their names (for `demo --down`)."""
    names = list_labs(prefix_start)
    errors = []
    for ns in names:
        try:
            remove_namespace(ns)
        except LabError as exc:
            errors.append(str(exc))
    if errors:
        raise LabError("; ".join(errors))
    return names


# --------------------------------------------------------------------------------------------------------------
# Running things inside a namespace


def netns_exec(ns: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    """subprocess.run(["ip", "netns", "exec", ns, *argv], **kw).  argv is a list (no shell).  Unless the caller
    chooses otherwise, output is captured as text and a failure is not raised (check=False)."""
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a list of arguments, not a string")
    if not any(k in kw for k in ("stdout", "stderr", "capture_output")):
        kw["capture_output"] = True
    if "encoding" not in kw and "errors" not in kw and "universal_newlines" not in kw:
        kw.setdefault("text", True)
    return subprocess.run([_ip_binary(), "netns", "exec", ns, *argv], **kw)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run fn in a short-lived thread that entered namespace ns; return its result or raise its exception.

    A socket created by fn belongs to ns for good and may then be used from any thread.  The thread ends right
    after, so it never keeps a namespace alive.
    """
    result: list = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            try:
                fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise LabError(f"network namespace {ns!r} cannot be opened: {exc.strerror}") from None
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise LabError(f"setns({ns}) failed: {os.strerror(ctypes.get_errno())}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _socket_in(ns: str, address: str, kind: socket.SocketKind) -> socket.socket:
    return in_netns(ns, lambda: socket.socket(_family(address), kind))


# --------------------------------------------------------------------------------------------------------------
# Services (servers inside a namespace, each in its own subprocess)

_SERVER = r'''
import os, socket, sys, threading
proto, address, port, tag, report = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
with_parent = sys.argv[6] == "1"
family = socket.AF_INET6 if ":" in address else socket.AF_INET

def watch_parent():
    # stdin is a pipe from the parent: EOF means stop() or the parent died; never outlive it.
    try:
        while os.read(0, 4096):
            pass
    finally:
        os._exit(0)

def answer(peer, text):
    text = text.rstrip("\r\n")
    if report:
        return f"{tag}:peer={peer[0]}:{peer[1]}:{text}"
    return f"{tag}:{text}"

def serve_tcp(conn, peer):
    buf = b""
    with conn:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    if buf:
                        conn.sendall((answer(peer, buf.decode(errors="replace")) + "\n").encode())
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    conn.sendall((answer(peer, line.decode(errors="replace")) + "\n").encode())
        except OSError:
            return

if with_parent:
    threading.Thread(target=watch_parent, daemon=True).start()
if proto == "tcp":
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen(128)
    print("ready", flush=True)
    while True:
        conn, peer = s.accept()
        threading.Thread(target=serve_tcp, args=(conn, peer), daemon=True).start()
else:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((address, port))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(65536)
        try:
            s.sendto(answer(peer, data.decode(errors="replace")).encode(), peer)
        except OSError:
            pass
'''


class Service:
    """A tiny echo server inside a namespace, in a subprocess (`ip netns exec NS python -c ...`).

    Each request line (TCP) or datagram (UDP) is answered with f"{tag}:{payload}" - or, with report_peer,
    f"{tag}:peer={peer_address}:{peer_port}:{payload}" - where tag defaults to the bound address, i.e. which lab
    machine answered.  TCP connections are served concurrently and stay open until the client closes them.
    The server is listening when start_* returns.  It exits when stop() is called, when its namespace is destroyed
    by destroy_lab, and - unless exit_with_parent=False (a lab meant to outlive the command that built it, in its
    own session) - when the process that started it goes away.
    """

    def __init__(self, ns: str, protocol: str, address: str, port: int, tag: str, process: subprocess.Popen):
        self.ns, self.protocol, self.address, self.port, self.tag = ns, protocol, address, port, tag
        self.process = process

    @classmethod
    def start_tcp_echo(cls, ns: str, address: str, port: int, *, tag: str | None = None, report_peer: bool = False,
                       timeout: float = 10.0, exit_with_parent: bool = True) -> "Service":
        return cls._start(ns, "tcp", address, port, tag, report_peer, timeout, exit_with_parent)

    @classmethod
    def start_udp_echo(cls, ns: str, address: str, port: int, *, tag: str | None = None, report_peer: bool = False,
                       timeout: float = 10.0, exit_with_parent: bool = True) -> "Service":
        return cls._start(ns, "udp", address, port, tag, report_peer, timeout, exit_with_parent)

    @classmethod
    def _start(cls, ns: str, protocol: str, address: str, port: int, tag: str | None, report_peer: bool,
               timeout: float, exit_with_parent: bool) -> "Service":
        tag = address if tag is None else tag
        argv = [_ip_binary(), "netns", "exec", ns, sys.executable, "-I", "-c", _SERVER,
                protocol, address, str(int(port)), tag, "1" if report_peer else "0", "1" if exit_with_parent else "0"]
        process = subprocess.Popen(argv, stdin=subprocess.PIPE if exit_with_parent else subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=not exit_with_parent)
        service = cls(ns, protocol, address, port, tag, process)
        deadline = time.monotonic() + timeout
        line = b""
        try:
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LabError(f"{protocol} service on {address}:{port} in {ns} did not start within {timeout}s")
                ready, _, _ = select.select([process.stdout], [], [], remaining)
                if ready:
                    chunk = os.read(process.stdout.fileno(), 64)
                    if not chunk:
                        process.wait(timeout=5)
                        err = process.stderr.read().decode(errors="replace").strip().splitlines()
                        raise LabError(f"{protocol} service on {address}:{port} in {ns} failed to start "
                                       f"(exit {process.returncode}): {err[-1] if err else 'no message'}")
                    line += chunk
        except BaseException:
            service.stop()
            raise
        return service

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        p = self.process
        if p.poll() is None:
            try:
                p.terminate()
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            except ProcessLookupError:
                pass
        else:
            p.wait()
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Service {self.protocol} {self.address}:{self.port} in {self.ns} ({state})>"


# --------------------------------------------------------------------------------------------------------------
# Clients (sockets created inside a namespace, used from the calling thread)


def _read_line(sock: socket.socket, buf: bytearray, deadline: float) -> str | None:
    """Read from sock into buf until a newline; return the line (without it), or None on timeout/EOF/error."""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except (OSError, ValueError):
            return None
        if not data:
            return None
        buf += data
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode(errors="replace").rstrip("\r")


def _connect(ns: str, address: str, port: int, source: str | None, deadline: float) -> socket.socket:
    sock = _socket_in(ns, address, socket.SOCK_STREAM)
    try:
        if source:
            sock.bind((source, 0))
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def tcp_request(ns: str, address: str, port: int, payload: str, *, source: str | None = None,
                timeout: float = 3.0) -> str | None:
    """From inside ns (optionally bound to source), connect, send one line, return the reply line - or None on
    timeout, refusal, unreachable network or reset.  `timeout` bounds the whole exchange."""
    deadline = time.monotonic() + timeout
    try:
        sock = _connect(ns, address, port, source, deadline)
    except OSError:
        return None
    with sock:
        try:
            sock.sendall(payload.encode() + b"\n")
        except OSError:
            return None
        return _read_line(sock, bytearray(), deadline)


def udp_request(ns: str, address: str, port: int, payload: str, *, source: str | None = None,
                timeout: float = 3.0) -> str | None:
    """From inside ns (optionally bound to source), send one datagram, return the reply - or None on timeout or an
    ICMP error (port unreachable, ...)."""
    deadline = time.monotonic() + timeout
    sock = _socket_in(ns, address, socket.SOCK_DGRAM)
    with sock:
        try:
            if source:
                sock.bind((source, 0))
            sock.connect((address, port))   # only the peer's replies, and ICMP errors reported
            sock.send(payload.encode())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
            data = sock.recv(65536)
        except OSError:
            return None
        return data.decode(errors="replace")


class TcpSession:
    """One TCP connection opened from inside a namespace and held across several exchanges."""

    def __init__(self, sock: socket.socket, ns: str, address: str, port: int):
        self.sock: socket.socket | None = sock
        self.ns, self.address, self.port = ns, address, port
        self._buf = bytearray()
        self.broken = False

    @classmethod
    def open(cls, ns: str, address: str, port: int, source: str | None = None, *,
             timeout: float = 3.0) -> "TcpSession":
        """Connect (raises OSError - e.g. ConnectionRefusedError or TimeoutError - when it cannot)."""
        sock = _connect(ns, address, port, source, time.monotonic() + timeout)
        return cls(sock, ns, address, port)

    @property
    def local_address(self) -> tuple[str, int] | None:
        return self.sock.getsockname()[:2] if self.sock else None

    def exchange(self, payload: str, timeout: float = 3.0) -> str | None:
        """Send one line and return the reply line; None when the connection no longer works (timeout, reset,
        closed).  After a None the session stays broken (a late reply would be out of step)."""
        if self.sock is None or self.broken:
            return None
        deadline = time.monotonic() + timeout
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(payload.encode() + b"\n")
        except OSError:
            self.broken = True
            return None
        reply = _read_line(self.sock, self._buf, deadline)
        if reply is None:
            self.broken = True
        return reply

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self) -> "TcpSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
