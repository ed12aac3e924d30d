"""Reachability probes: ICMP echo and TCP connect checks over many targets at once, from the calling thread's
network namespace.

Both probes act in the network namespace of the thread that calls them (a thread's namespace is its own, see
`labgate.dataplane.netns`), so a caller runs them in a `NamespaceWorker` or uses `probe_in_namespace`.

Design notes (the why):
- ICMP uses one raw socket per address family (needs CAP_NET_RAW, i.e. root; unprivileged `SOCK_DGRAM` ICMP sockets
  need `net.ipv4.ping_group_range`, which is off in every new namespace).  All echo requests leave through it, paced
  at `rate` packets/s, and one loop matches replies by identifier, sequence, a per-call random token in the payload
  and the reply's source.  No `ping`/`fping` process: one cycle over 50,000 addresses is a few seconds, not minutes.
  The default rate, 20,000/s (about 10 Mbit/s of 64-byte requests; each address gets one or two), is what keeps
  a cycle over 50,000 addresses, half of them silent, near 5 s: requests sent / rate + 2 timeouts.
- A raw ICMP socket sees every ICMP packet of the namespace (other pingers', other probe calls'), hence the random
  identifier and token; `ICMP_FILTER` keeps out every type but echo reply, destination unreachable and time exceeded.
- An ICMP error about one of our requests (host/net unreachable, prohibited, TTL exceeded) makes that address down at
  once, with the reason; a send that fails because there is no route does too.  Silence is retried `attempts` times.
- rtt comes from the kernel's receive timestamp (SO_TIMESTAMPNS), so a busy loop does not inflate it.
- A request the kernel refuses to send is not evidence that the address is down.  Raw sockets hide such drops
  (ENOBUFS) unless IP_RECVERR is set, so it is, and an address whose sends keep failing comes back
  `inconclusive` (the caller keeps its previous state) instead of down.  IP_RECVERR also makes the socket carry
  the last ICMP error as a pending error, returned once by the next send whatever its destination: a failed send
  is therefore tried again at once, and only an error that repeats counts.
- On-link targets need one neighbour (ARP) entry each.  The neighbour table is shared by all namespaces of the
  host and an entry cannot be reclaimed before it is 5 s old, so probing more than
  `net.ipv4.neigh.default.gc_thresh3` (1024 by default) on-link addresses within a few seconds overflows it: the
  kernel drops those requests (ENOBUFS; "neighbor table overflow!" in dmesg) and, for a few seconds, cannot add
  neighbours in any namespace.  Those addresses come back inconclusive.  A gateway with large directly connected
  lab networks needs a larger gc_thresh3 (a host setting); routed lab networks need one entry per next hop only.
- TCP: non-blocking connects driven by a selector, at most `concurrency` at once; each socket is closed with
  SO_LINGER 0 (a reset, no TIME_WAIT), so repeated cycles do not pile up sockets.  A silent target holds its slot
  for the whole timeout, so the TCP part lasts about (silent targets / concurrency) x timeout: the default of
  10,000 connects in flight makes 25,000 silent targets 2.5 s, where 1,000 made them 25 s.  Each connect in flight is
  a descriptor, so a probe never takes more than the process can spare (`_descriptor_budget`): it must not starve
  the API server's connections, the database or libnftables' netlink socket (which exits the process on EMFILE).
  Each connect, answered or not, is also a conntrack entry in the gateway namespace (a silent one stays 120 s in
  SYN_SENT with the kernel's default timeouts), which nf_conntrack_max must leave room for.
"""

from __future__ import annotations

import array
import errno
import heapq
import ipaddress
import os
import resource
import selectors
import socket
import struct
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Iterable

from labgate.dataplane.netns import NamespaceWorker

__all__ = ["IcmpResult", "TcpResult", "NamespaceProbe", "icmp_probe", "tcp_probe", "probe_in_namespace",
           "TCP_STATES", "DEFAULT_RATE", "DEFAULT_CONCURRENCY"]

DEFAULT_RATE = 20_000           # ICMP echo requests per second (see the design notes above)
DEFAULT_CONCURRENCY = 10_000    # TCP connects in flight at most (and never more than _descriptor_budget())
_FD_HEADROOM = 2048             # descriptors a TCP probe leaves to the rest of the process (API connections: 1,024
                                # at most by default, the database, netlink sockets, sinks), when it can

# Kernel constants Python's socket module does not export (Linux, asm-generic values).
_SOL_RAW = 255
_ICMP_FILTER = 1
_ICMPV6_FILTER = 1
_SO_TIMESTAMPNS = 35
_IP_RECVERR = 11
_IPV6_RECVERR = 25

_ECHO_REPLY, _DEST_UNREACH, _ECHO_REQUEST, _TIME_EXCEEDED = 0, 3, 8, 11
_ECHO6_REQUEST, _ECHO6_REPLY, _DEST6_UNREACH, _TIME6_EXCEEDED = 128, 129, 1, 3

_UNREACH_REASONS = {0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
                    3: "port unreachable", 4: "fragmentation needed", 5: "source route failed",
                    6: "destination network unknown", 7: "destination host unknown", 9: "network prohibited",
                    10: "host prohibited", 11: "network unreachable for TOS", 12: "host unreachable for TOS",
                    13: "administratively prohibited"}
_UNREACH6_REASONS = {0: "no route to destination", 1: "administratively prohibited", 2: "beyond scope of source",
                     3: "address unreachable", 4: "port unreachable", 5: "source address failed policy",
                     6: "reject route to destination"}

# Send errors: no route -> down now; a full socket buffer -> pause all sending; anything else (ENOBUFS: dropped on
# the way out, EPERM: a local firewall, EINVAL: a blackhole route, ...) -> retry this address after a backoff, and
# after _MAX_SEND_ERRORS failures report it inconclusive.
_NO_ROUTE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN}
_SOCKET_FULL = {errno.EAGAIN, errno.ENOMEM}
_MAX_SEND_ERRORS = 3        # per address
_SEND_BACKOFF = 0.05        # seconds before the first resend of an address whose send failed; x4 each time
_MAX_BUFFER_STALLS = 200    # per address, consecutive socket-full sends before giving up on it
_SOCKET_BUFFER = 8 << 20    # receive and send buffers of the raw sockets (replies arrive in bursts)

TCP_STATES = ("open", "refused", "timeout", "unreachable", "error")
_TCP_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENONET, errno.ENETDOWN}
_TCP_LOCAL_SHORTAGE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL, errno.EAGAIN}


@dataclass(frozen=True, slots=True)
class IcmpResult:
    """One address's answer: alive with its round-trip time, or not alive with the reason in `error` ("timeout",
    "host unreachable (from 10.9.0.1)", "no route: ...", "invalid address"; never None when alive is False).

    `inconclusive` is True when the gateway itself could not send the requests ("send failed: ..."): the address
    was not really probed, so its state is unknown, not down.
    """

    address: str
    alive: bool
    rtt_ms: float | None
    error: str | None
    inconclusive: bool = False


@dataclass(frozen=True, slots=True)
class TcpResult:
    """One (address, port): state is "open" (rtt = connect time), "refused" (a reset: the machine is up), "timeout"
    (no answer), "unreachable" (no route, or an ICMP error) or "error" (the probe itself could not be made: invalid
    address, local firewall, out of sockets; the caller should treat it as unknown, not down)."""

    address: str
    port: int
    state: str
    rtt_ms: float | None
    error: str | None = None

    @property
    def target(self) -> tuple[str, int]:
        return self.address, self.port


@dataclass(frozen=True)
class NamespaceProbe:
    """What `probe_in_namespace` found in one namespace, and how long it took."""

    netns: str
    icmp: dict[str, IcmpResult] = field(default_factory=dict)
    tcp: dict[tuple[str, int], TcpResult] = field(default_factory=dict)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------------------------
# ICMP


def _checksum(data: bytes) -> int:
    """RFC 1071 checksum, summed in native byte order (the one's-complement sum does not care); pack with "=H"."""
    if len(data) % 2:
        data += b"\0"
    total = sum(array.array("H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text) if isinstance(text, str) else None
    except (ValueError, TypeError):
        return None


class _Target:
    __slots__ = ("text", "packed", "v6", "sockaddr", "attempts_sent", "last_probe", "send_errors", "stalls", "done")

    def __init__(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        self.text = str(addr)
        self.packed = addr.packed
        self.v6 = addr.version == 6
        scope = getattr(addr, "scope_id", None)
        self.sockaddr = (self.text, 0, 0, socket.if_nametoindex(scope) if scope and not scope.isdigit()
                         else int(scope or 0)) if self.v6 else (self.text, 0)
        self.attempts_sent = 0
        self.last_probe = -1
        self.send_errors = 0
        self.stalls = 0
        self.done = False


def _open_icmp_socket(v6: bool) -> socket.socket:
    family, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    try:
        sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, proto)
    except PermissionError as exc:
        raise PermissionError(exc.errno, "ICMP probes need a raw socket (root or CAP_NET_RAW)") from None
    try:
        if v6:
            # struct icmp6_filter: a set bit blocks the type.
            words = [0xFFFFFFFF] * 8
            for t in (_ECHO6_REPLY, _DEST6_UNREACH, _TIME6_EXCEEDED):
                words[t >> 5] &= ~(1 << (t & 31))
            sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMPV6_FILTER, struct.pack("8I", *words))
        else:
            # struct icmp_filter: a set bit drops the type.
            passed = (1 << _ECHO_REPLY) | (1 << _DEST_UNREACH) | (1 << _TIME_EXCEEDED)
            sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", ~passed & 0xFFFFFFFF))
        for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
                             (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, _SOCKET_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, _SOCKET_BUFFER)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError:
            pass    # rtt then falls back to the time the loop reads the reply
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
    except BaseException:
        sock.close()
        raise
    return sock


class _IcmpRun:
    """One icmp_probe call: the send schedule, the in-flight probes and the matching of what comes back."""

    def __init__(self, targets: list[_Target], timeout: float, attempts: int, rate: int) -> None:
        self.targets = targets
        self.timeout = timeout
        self.attempts = attempts
        self.interval = 1.0 / rate
        self.burst = max(1, rate // 200)            # at most 5 ms worth of packets at once
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.token = os.urandom(8)
        self.payload = self.token + b"labgate!"
        self.probe_target: list[int] = []           # probe number -> target index
        self.probe_sent: list[float] = []           # probe number -> wall-clock send time (kernel stamps are wall)
        self.results: dict[str, IcmpResult] = {}
        self.left = len(targets)

    # -- packets

    def _packet(self, n: int, v6: bool) -> bytes:
        ident = (self.ident + (n >> 16)) & 0xFFFF
        header = struct.pack("!BBHHH", _ECHO6_REQUEST if v6 else _ECHO_REQUEST, 0, 0, ident, n & 0xFFFF)
        if v6:  # the kernel computes ICMPv6 checksums of raw sockets itself
            return header + self.payload
        csum = _checksum(header + self.payload)
        return header[:2] + struct.pack("=H", csum) + header[4:] + self.payload

    def _probe_number(self, ident: int, seq: int) -> int | None:
        n = (((ident - self.ident) & 0xFFFF) << 16) | seq
        return n if n < len(self.probe_target) else None

    # -- outcomes

    def _finish(self, index: int, alive: bool, rtt_ms: float | None, error: str | None,
                inconclusive: bool = False) -> None:
        target = self.targets[index]
        if target.done:
            return
        target.done = True
        self.left -= 1
        self.results[target.text] = IcmpResult(target.text, alive, rtt_ms, error, inconclusive)

    def _on_reply(self, ident: int, seq: int, source: bytes, payload: bytes, stamp: float) -> None:
        if payload[:8] != self.token:
            return
        n = self._probe_number(ident, seq)
        if n is None:
            return
        index = self.probe_target[n]
        if self.targets[index].packed != source:
            return
        self._finish(index, True, round(max(stamp - self.probe_sent[n], 0.0) * 1000.0, 3), None)

    def _on_error(self, ident: int, seq: int, destination: bytes, reason: str, sender: str) -> None:
        n = self._probe_number(ident, seq)
        if n is None:
            return
        index = self.probe_target[n]
        if self.targets[index].packed != destination:
            return
        self._finish(index, False, None, f"{reason} (from {sender})")

    # -- receiving

    def _read(self, sock: socket.socket, v6: bool) -> None:
        # IP_RECVERR's error queue repeats ICMP errors the loop also reads as packets: drain it, or the socket
        # stays readable (EPOLLERR) for ever.
        while True:
            try:
                sock.recvmsg(2048, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
        failures = 0
        while True:
            try:
                data, ancdata, _flags, peer = sock.recvmsg(2048, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # A pending ICMP error (IP_RECVERR), returned once; the packets are still there behind it.
                failures += 1
                if failures > 8:
                    return
                continue
            stamp = None
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack_from("=qq", value)
                    stamp = sec + nsec / 1e9
            if stamp is None:
                stamp = time.time()
            if v6:
                self._parse_v6(data, peer, stamp)
            else:
                self._parse_v4(data, stamp)

    def _parse_v4(self, data: bytes, stamp: float) -> None:
        if len(data) < 20:
            return
        ihl = (data[0] & 0x0F) * 4
        if len(data) < ihl + 8:
            return
        kind, code = data[ihl], data[ihl + 1]
        if kind == _ECHO_REPLY:
            ident, seq = struct.unpack_from("!HH", data, ihl + 4)
            self._on_reply(ident, seq, data[12:16], data[ihl + 8:ihl + 16], stamp)
        elif kind in (_DEST_UNREACH, _TIME_EXCEEDED):
            inner = ihl + 8                                 # the offending datagram: IP header + >= 8 bytes
            if len(data) < inner + 20 or data[inner + 9] != socket.IPPROTO_ICMP:
                return
            inner_icmp = inner + (data[inner] & 0x0F) * 4
            if len(data) < inner_icmp + 8 or data[inner_icmp] != _ECHO_REQUEST:
                return
            ident, seq = struct.unpack_from("!HH", data, inner_icmp + 4)
            reason = (_UNREACH_REASONS.get(code, f"unreachable (code {code})") if kind == _DEST_UNREACH
                      else "time to live exceeded")
            self._on_error(ident, seq, data[inner + 16:inner + 20], reason, socket.inet_ntoa(data[12:16]))

    def _parse_v6(self, data: bytes, peer: tuple, stamp: float) -> None:
        if len(data) < 8:
            return
        kind, code = data[0], data[1]
        if kind == _ECHO6_REPLY:
            ident, seq = struct.unpack_from("!HH", data, 4)
            source = socket.inet_pton(socket.AF_INET6, peer[0].split("%", 1)[0])
            self._on_reply(ident, seq, source, data[8:16], stamp)
        elif kind in (_DEST6_UNREACH, _TIME6_EXCEEDED):
            inner = 8                                       # the offending packet: IPv6 header (40) + ICMPv6
            if len(data) < inner + 48 or data[inner + 6] != socket.IPPROTO_ICMPV6 or data[inner + 40] != _ECHO6_REQUEST:
                return
            ident, seq = struct.unpack_from("!HH", data, inner + 44)
            reason = (_UNREACH6_REASONS.get(code, f"unreachable (code {code})") if kind == _DEST6_UNREACH
                      else "hop limit exceeded")
            self._on_error(ident, seq, data[inner + 24:inner + 40], reason, peer[0])

    # -- the loop

    _sent_at = 0.0

    def _send(self, sock: socket.socket, packet: bytes, sockaddr: tuple) -> int:
        """Send one request; 0 or the errno.  An error is checked by sending again at once: the first may be a
        pending ICMP error about another address (IP_RECVERR), which the kernel returns only once."""
        code = 0
        for _ in range(2):
            self._sent_at = time.time()
            try:
                sock.sendto(packet, sockaddr)
                return 0
            except OSError as exc:
                code = exc.errno or errno.EIO
                if code in _SOCKET_FULL:
                    return code
        return code

    def run(self) -> dict[str, IcmpResult]:
        socks: dict[bool, socket.socket] = {}
        selector = selectors.DefaultSelector()
        try:
            for v6 in sorted({t.v6 for t in self.targets}):
                socks[v6] = _open_icmp_socket(v6)
                selector.register(socks[v6], selectors.EVENT_READ, v6)
            self._loop(socks, selector)
        finally:
            selector.close()
            for sock in socks.values():
                sock.close()
        return self.results

    def _loop(self, socks: dict[bool, socket.socket], selector: selectors.BaseSelector) -> None:
        fresh = deque(range(len(self.targets)))            # never sent yet
        # Fresh requests go before retries: the cycle ends one timeout after the last retry, and a retry can only be
        # sent one timeout after its first request, so the sooner every first request is out, the sooner it ends
        # (10,000 addresses, half dead: 4.0 s instead of 4.7 s with retries first).
        again: deque[int] = deque()                         # timed out with attempts left, or a send to redo
        delayed: list[tuple[float, int]] = []               # (not before, index) after a failed send
        in_flight: deque[tuple[float, int, int]] = deque()  # (deadline, index, probe number), deadline order
        next_send = time.monotonic()
        pause_until = 0.0
        pause = 0.0

        while self.left:
            now = time.monotonic()

            # Silence past the deadline: try again or give up.  Read what is queued first: when this thread was not
            # scheduled for a while, replies that came in time are waiting in the socket.
            if in_flight and in_flight[0][0] <= now:
                for v6, sock in socks.items():
                    self._read(sock, v6)
            while in_flight and in_flight[0][0] <= now:
                _, index, n = in_flight.popleft()
                target = self.targets[index]
                if target.done or target.last_probe != n:
                    continue
                if target.attempts_sent < self.attempts:
                    again.append(index)
                else:
                    self._finish(index, False, None, "timeout")
            while delayed and delayed[0][0] <= now:
                again.appendleft(heapq.heappop(delayed)[1])

            # Send what the pace allows.
            if next_send < now - self.burst * self.interval:
                next_send = now - self.burst * self.interval
            while next_send <= now and now >= pause_until and (again or fresh):
                queue = fresh if fresh else again
                index = queue[0]
                target = self.targets[index]
                if target.done:
                    queue.popleft()
                    continue
                n = len(self.probe_target)
                code = self._send(socks[target.v6], self._packet(n, target.v6), target.sockaddr)
                sent_at = self._sent_at
                if code:
                    if code in _SOCKET_FULL:
                        target.stalls += 1
                        if target.stalls > _MAX_BUFFER_STALLS:
                            queue.popleft()
                            self._finish(index, False, None, f"send failed: {os.strerror(code)}", True)
                            continue
                        pause = min(max(pause * 2, 0.001), 0.05)
                        pause_until = now + pause
                        break
                    queue.popleft()
                    if code in _NO_ROUTE:
                        self._finish(index, False, None, f"no route: {os.strerror(code)}")
                        continue
                    target.send_errors += 1
                    if target.send_errors >= _MAX_SEND_ERRORS:
                        hint = (" (neighbour table full? see net.ipv4.neigh.default.gc_thresh3)"
                                if code == errno.ENOBUFS else "")
                        self._finish(index, False, None, f"send failed: {os.strerror(code)}{hint}", True)
                    else:
                        heapq.heappush(delayed, (now + _SEND_BACKOFF * 4 ** (target.send_errors - 1), index))
                    continue
                queue.popleft()
                pause = 0.0
                target.stalls = 0
                self.probe_target.append(index)
                self.probe_sent.append(sent_at)
                target.attempts_sent += 1
                target.last_probe = n
                in_flight.append((now + self.timeout, index, n))
                next_send += self.interval

            # Wait for replies until the next thing to do.
            wake = []
            if again or fresh:
                wake.append(max(next_send, pause_until))
            if in_flight:
                wake.append(in_flight[0][0])
            if delayed:
                wake.append(delayed[0][0])
            if not wake:
                if self.left:   # cannot happen: every unfinished target is queued, delayed or in flight
                    raise RuntimeError("icmp_probe lost track of targets")
                break
            wait = min(wake) - time.monotonic()
            for key, _ in selector.select(max(wait, 0.0)):
                self._read(key.fileobj, key.data)


def icmp_probe(addresses: Iterable[str], *, timeout: float = 1.0, attempts: int = 2,
               rate: int = DEFAULT_RATE) -> dict[str, IcmpResult]:
    """Ping every address (ICMP echo) from the calling thread's network namespace; return {address: IcmpResult}
    with one entry per distinct input string (duplicates are probed once).

    Each address gets up to `attempts` echo requests, each waited for `timeout` seconds; requests leave at `rate`
    per second overall.  An address whose requests bring back an ICMP error, or that has no route, is down at once.
    A request the kernel refuses to send (a local firewall, a full neighbour table) is retried after a backoff, and
    after 3 refusals the address comes back `inconclusive`.  Invalid addresses come back not alive with an error;
    nothing raises but PermissionError (no CAP_NET_RAW).  The call lasts about (requests sent) / rate + timeout,
    and at least timeout * attempts when some address stays silent: 50,000 addresses, half of them silent, with
    the defaults take about 75,000 / 20,000 + 1 = 4.75 s.
    """
    if timeout <= 0 or attempts < 1 or rate < 1:
        raise ValueError("timeout must be > 0, attempts >= 1 and rate >= 1")
    inputs: dict[str, int | IcmpResult] = {}    # input text -> target index, or its result when invalid
    by_address: dict[str, int] = {}             # canonical text -> target index ("2001:DB8::1" = "2001:db8::1")
    targets: list[_Target] = []
    for text in addresses:
        if text in inputs:
            continue
        addr = _parse_address(text)
        if addr is None:
            inputs[text] = IcmpResult(str(text), False, None, "invalid address")
            continue
        try:
            target = _Target(addr)
        except OSError as exc:      # an unknown interface in a scoped IPv6 address
            inputs[text] = IcmpResult(str(text), False, None, f"invalid address: {exc.strerror}")
            continue
        if target.text not in by_address:
            by_address[target.text] = len(targets)
            targets.append(target)
        inputs[text] = by_address[target.text]
    found = _IcmpRun(targets, timeout, attempts, rate).run() if targets else {}
    results: dict[str, IcmpResult] = {}
    for text, entry in inputs.items():
        if isinstance(entry, IcmpResult):
            results[text] = entry
            continue
        result = found[targets[entry].text]
        results[text] = result if result.address == text else replace(result, address=text)
    return results


# --------------------------------------------------------------------------------------------------------------
# TCP


def _tcp_state(code: int) -> str:
    if code == 0:
        return "open"
    if code in (errno.ECONNREFUSED, errno.ECONNRESET):
        return "refused"
    if code == errno.ETIMEDOUT:
        return "timeout"
    if code in _TCP_UNREACHABLE:
        return "unreachable"
    return "error"


def _descriptor_budget() -> int:
    """How many descriptors a TCP probe may hold at once: what the process's soft RLIMIT_NOFILE leaves free now,
    minus _FD_HEADROOM for everything else; a quarter of the free ones when that leaves fewer (a small limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 0
    free = soft - used
    return max(1, free // 4, free - _FD_HEADROOM)


def tcp_probe(targets: Iterable[tuple[str, int]], *, timeout: float = 1.0,
              concurrency: int = DEFAULT_CONCURRENCY) -> dict[tuple[str, int], TcpResult]:
    """Try a TCP connect to every (address, port) from the calling thread's network namespace; return
    {(address, port): TcpResult} with one entry per distinct input pair.

    At most `concurrency` connects are in flight, and never more than the descriptors the process can spare
    (its soft RLIMIT_NOFILE less those open and a headroom of 2,048, or a quarter of the free ones, whichever
    leaves more); each gets `timeout` seconds from its start, so silent targets wait together, not one after the
    other.  Every socket is closed (with a reset) before returning.  Invalid targets come back as state "error",
    never raise.  When the process runs out of file descriptors anyway, the probe waits for its own sockets to
    finish rather than failing.
    """
    if timeout <= 0 or concurrency < 1:
        raise ValueError("timeout must be > 0 and concurrency >= 1")
    concurrency = min(concurrency, _descriptor_budget())
    results: dict[tuple[str, int], TcpResult] = {}
    queue: deque[tuple[tuple[str, int], tuple, socket.AddressFamily]] = deque()
    order: dict[tuple[str, int], None] = {}     # distinct targets, in input order
    for target in targets:
        key = tuple(target)
        if key in order:
            continue
        order[key] = None
        address, port = key if len(key) == 2 else (key, None)
        addr = _parse_address(address)
        if addr is None or not isinstance(port, int) or not 0 < port < 65536:
            results[key] = TcpResult(str(address), port, "error", None, "invalid address or port")
            continue
        if addr.version == 6:
            scope = addr.scope_id
            sockaddr = (str(addr).split("%", 1)[0], port, 0,
                        (int(scope) if scope.isdigit() else socket.if_nametoindex(scope)) if scope else 0)
            queue.append((key, sockaddr, socket.AF_INET6))
        else:
            queue.append((key, (str(addr), port), socket.AF_INET))

    selector = selectors.DefaultSelector()
    in_flight: dict[int, tuple[socket.socket, tuple[str, int], float]] = {}
    deadlines: deque[tuple[float, int, socket.socket]] = deque()

    def finish(key: tuple[str, int], state: str, started: float | None, code: int = 0, note: str | None = None):
        rtt = round((time.monotonic() - started) * 1000.0, 3) if started is not None and state in (
            "open", "refused") else None
        error = note or (os.strerror(code) if code and state != "refused" else None)
        results[key] = TcpResult(key[0], key[1], state, rtt, error)

    def close(sock: socket.socket) -> None:
        try:
            selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    try:
        while queue or in_flight:
            # Start connects up to the limit.
            while queue and len(in_flight) < concurrency:
                key, sockaddr, family = queue[0]
                try:
                    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
                except OSError as exc:
                    if exc.errno in _TCP_LOCAL_SHORTAGE and in_flight:
                        break       # wait for some of ours to finish
                    queue.popleft()
                    finish(key, "error", None, exc.errno or 0, f"socket: {exc.strerror}")
                    continue
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                started = time.monotonic()
                code = sock.connect_ex(sockaddr)
                if code == errno.EINPROGRESS:
                    queue.popleft()
                    selector.register(sock, selectors.EVENT_WRITE, key)
                    in_flight[sock.fileno()] = (sock, key, started)
                    deadlines.append((started + timeout, sock.fileno(), sock))
                    continue
                if code in _TCP_LOCAL_SHORTAGE and in_flight:
                    sock.close()
                    break
                queue.popleft()
                sock.close()
                finish(key, _tcp_state(code), started, code)

            if not in_flight:
                continue
            wait = deadlines[0][0] - time.monotonic() if deadlines else 0.0
            for selkey, _ in selector.select(max(wait, 0.0)):
                sock = selkey.fileobj
                entry = in_flight.pop(sock.fileno(), None)
                if entry is None:
                    continue
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                finish(entry[1], _tcp_state(code), entry[2], code)
                close(sock)
            now = time.monotonic()
            while deadlines:
                deadline, fd, sock = deadlines[0]
                entry = in_flight.get(fd)
                if entry is not None and entry[0] is sock and deadline > now:
                    break
                deadlines.popleft()
                if entry is None or entry[0] is not sock:
                    continue        # answered already (its fd number may belong to a newer socket by now)
                del in_flight[fd]
                finish(entry[1], "timeout", None)
                close(sock)
    finally:
        for sock, _, _ in in_flight.values():
            close(sock)
        selector.close()
    return {key: results[key] for key in order}


# --------------------------------------------------------------------------------------------------------------
# Both, inside a named namespace


def probe_in_namespace(netns: str, addresses: Iterable[str] = (), tcp_targets: Iterable[tuple[str, int]] = (), *,
                       timeout: float = 1.0, attempts: int = 2, rate: int = DEFAULT_RATE,
                       tcp_timeout: float | None = None, concurrency: int = DEFAULT_CONCURRENCY) -> NamespaceProbe:
    """Run icmp_probe(addresses) and tcp_probe(tcp_targets) at the same time inside network namespace `netns`
    ("" = this process's own), each in a thread that entered it, and return both results.

    Raises labgate.dataplane.netns.NamespaceError when the namespace does not exist or cannot be entered, and
    whatever a probe raises (PermissionError without CAP_NET_RAW); the threads are gone when it returns.
    """
    addresses, tcp_targets = list(addresses), list(tcp_targets)
    started = time.monotonic()
    workers: list[NamespaceWorker] = []
    try:
        icmp_job: Future | None = None
        tcp_job: Future | None = None
        if addresses:
            workers.append(NamespaceWorker(netns))
            icmp_job = workers[-1].submit(lambda: icmp_probe(addresses, timeout=timeout, attempts=attempts,
                                                             rate=rate))
        if tcp_targets:
            workers.append(NamespaceWorker(netns))
            tcp_job = workers[-1].submit(lambda: tcp_probe(tcp_targets, timeout=tcp_timeout or timeout,
                                                           concurrency=concurrency))
        icmp = icmp_job.result() if icmp_job else {}
        tcp = tcp_job.result() if tcp_job else {}
    finally:
        for worker in workers:
            worker.close()
    return NamespaceProbe(netns, icmp, tcp, round(time.monotonic() - started, 3))
