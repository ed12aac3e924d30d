"""labgate's HTTP server: uvicorn, with the defences a server that runs beside a lab's firewall needs.

uvicorn times out idle keep-alive connections between requests, and nothing else: a client that connects and never
finishes its headers holds a descriptor forever, and ~1,000 of them used to exhaust the process's descriptors (then
libnftables could not open its netlink socket and called exit()). Here, per connection (`GuardedH11Protocol`):

- every connection is counted from the moment it is accepted (an HTTPS one during its TLS handshake too); beyond
  `max_connections` a new one is answered 503 and closed at once, so clients never get the descriptors kept in
  reserve for the database and the dataplane;
- a request's headers must arrive within `header_timeout` (from connecting, or from the end of the previous
  answer), its body within `body_timeout`; an answer the client does not read is dropped after `body_timeout`;
- TLS is done here on each accepted connection (asyncio's start_tls, so the handshake is counted and timed like the
  rest) with the context loaded from tls_cert_file/tls_key_file: `HttpServer.reload_tls()` (SIGHUP in
  `labgate serve`) loads the files again, and every handshake after it gets the new certificate.

`labgate serve` also raises the soft RLIMIT_NOFILE to the hard limit (`raise_descriptor_limit`), and
`HttpLimits.for_server` derives the connection bound from the limit it got.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import ssl
import time
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from labgate.config import ServerConfig

log = logging.getLogger("labgate.http")

# The automatic connection bound never goes above this: plenty for a gateway's API, and it bounds what buffered
# request bodies can cost (max_connections x max_body_bytes).
CONNECTIONS_CEILING = 1024


def descriptor_limit() -> int:
    """This process's soft limit on open descriptors."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else _nr_open()


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (any process may); returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = descriptor_limit()
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("event=nofile_not_raised soft=%d hard=%d error=%r", soft, hard, str(exc))
    return before, descriptor_limit()


@dataclass(frozen=True)
class HttpLimits:
    """What one server accepts from its clients."""

    header_timeout: float
    body_timeout: float
    max_connections: int
    backlog: int
    nofile: int

    @classmethod
    def for_server(cls, cfg: ServerConfig, nofile: int | None = None) -> "HttpLimits":
        """The limits of [server] `cfg` for a process allowed `nofile` descriptors (default: this one's).

        Connections get the descriptor limit minus `fd_reserve`, at most CONNECTIONS_CEILING; with a small limit
        at least half of it (the reserve then being the other half); a configured max_connections above that room
        is lowered to it (with a warning). The listen backlog stays well inside the reserve: asyncio accepts up to
        a backlog's worth of connections in one go before any can be refused."""
        nofile = nofile or descriptor_limit()
        room = max(nofile - cfg.fd_reserve, nofile // 2)
        if cfg.max_connections:
            conns = min(cfg.max_connections, room)
            if conns < cfg.max_connections:
                log.warning("event=max_connections_lowered configured=%d used=%d nofile=%d fd_reserve=%d (the "
                            "descriptors kept for the database and the dataplane come first)",
                            cfg.max_connections, conns, nofile, cfg.fd_reserve)
        else:
            conns = min(CONNECTIONS_CEILING, room)
        conns = max(1, conns)
        backlog = max(8, min(128, (nofile - conns) // 4))
        return cls(cfg.header_timeout, cfg.body_timeout, conns, backlog, nofile)


class TlsFiles:
    """The server's certificate and key, loaded into the context new handshakes use; `reload()` re-reads them."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = self._load()

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # An encrypted key must fail, not make OpenSSL prompt for a passphrase on a terminal nobody watches.
        context.load_cert_chain(self.cert_file, self.key_file, password=lambda: b"")
        context.set_alpn_protocols(["http/1.1"])
        return context

    def reload(self) -> bool:
        """Load the files again; on failure keep serving the previous certificate (and say why)."""
        try:
            context = self._load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("event=tls_reload_failed cert_file=%s key_file=%s error=%r: still serving the previous "
                      "certificate", self.cert_file, self.key_file, str(exc))
            return False
        self.context = context
        log.info("event=tls_reloaded cert_file=%s", self.cert_file)
        return True


def _raw_answer(status: str, code: str, message: str, extra: str = "") -> bytes:
    """A complete HTTP/1.1 answer written before (or instead of) any request: the API's error shape, then close."""
    body = json.dumps({"error": {"code": code, "message": message, "field": None}}, separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n{extra}\r\n")
    return head.encode() + body


REFUSED = _raw_answer("503 Service Unavailable", "too_many_connections",
                      "the server has as many open connections as it accepts; retry shortly", "retry-after: 1\r\n")
HEADERS_TIMED_OUT = _raw_answer("408 Request Timeout", "request_timeout",
                                "the request's headers did not arrive in time")


class RefusalLog:
    """Counts connections refused for want of room; says so at most once a minute (a flood must not flood logs)."""

    def __init__(self) -> None:
        self.total = 0
        self._unlogged = 0
        self._logged_at = float("-inf")

    def note(self, limit: int) -> None:
        self.total += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= 60:
            log.warning("event=connections_refused refused=%d total=%d max_connections=%d (a crowd of clients, or "
                        "an attack; if they are real clients raise [server] max_connections or the descriptor "
                        "limit)", self._unlogged, self.total, limit)
            self._logged_at = now
            self._unlogged = 0


class LabgateConfig(uvicorn.Config):
    """uvicorn's Config plus what GuardedH11Protocol reads: the limits, the TLS files, the refusal counter."""

    def __init__(self, app: Any, *, limits: HttpLimits, tls: TlsFiles | None, **kwargs: Any) -> None:
        super().__init__(app, http=GuardedH11Protocol, backlog=limits.backlog, **kwargs)
        self.limits = limits
        self.tls = tls
        self.refusals = RefusalLog()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, counted from accept, with header/body/write deadlines and TLS done per connection.

    Until `_handed` the connection is ours alone (refused, or in its TLS handshake); then uvicorn's side takes
    over with the (TLS) transport, and `_follow()` keeps one read deadline matching what h11 waits for."""

    def __init__(self, config: LabgateConfig, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: HttpLimits = config.limits
        self.tls: TlsFiles | None = config.tls
        self._refusals: RefusalLog = config.refusals
        self._handed = False
        self._lost = False
        self._early: list[bytes] | None = None
        self._tls_task: asyncio.Task[None] | None = None
        self._phase: str | None = None
        self._read_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None

    # --- connection life ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        if len(self.connections) >= self.limits.max_connections:
            self._lost = True
            self._refusals.note(self.limits.max_connections)
            if self.tls is None:
                transport.write(REFUSED)
            transport.close()
            return
        self.connections.add(self)
        self._set_phase("headers")
        if self.tls is None:
            self._hand_over(transport)
            return
        # Nothing may reach h11 before the handshake: start_tls takes the transport over from here.
        transport.pause_reading()
        self._early = []
        self._tls_task = self.loop.create_task(self._start_tls(transport, self.tls.context))

    async def _start_tls(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            secured = await self.loop.start_tls(raw, self, context, server_side=True,
                                                ssl_handshake_timeout=self.limits.header_timeout,
                                                ssl_shutdown_timeout=self.limits.header_timeout)
        except asyncio.CancelledError:
            self._forget()
            raise
        except Exception as exc:  # noqa: BLE001 - a failed, reset or timed out handshake: just this connection
            log.debug("event=tls_handshake_failed client=%s error=%r", _peer(raw), str(exc))
            self._forget()
            return
        if self._lost or secured is None:
            if secured is not None:
                secured.abort()
            self._forget()
            return
        early, self._early = self._early or [], None
        self._hand_over(secured)  # type: ignore[arg-type]
        for data in early:
            if self._lost:
                break
            self.data_received(data)

    def _hand_over(self, transport: asyncio.Transport) -> None:
        self._handed = True
        super().connection_made(transport)

    def _forget(self) -> None:
        self._lost = True
        self._cancel_timers()
        self.connections.discard(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_timers()
        if not self._handed:
            self.connections.discard(self)
            return
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if not self._handed:
            if self.transport is not None:
                self.transport.close()
            return
        super().shutdown()

    # --- reading -----------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._early is not None:  # TLS is up but uvicorn's side is not set up yet (next loop turn)
            self._early.append(data)
            return
        if not self._handed or self._lost:
            return
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def _follow(self) -> None:
        """One read deadline for what h11 waits for now: headers (idle or partial), a body, or nothing."""
        if self._lost or not self._handed:
            return
        state = self.conn.their_state
        self._set_phase("headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None)

    def _set_phase(self, phase: str | None) -> None:
        if phase == self._phase:
            return
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._phase = phase
        if phase is not None:
            seconds = self.limits.header_timeout if phase == "headers" else self.limits.body_timeout
            self._read_timer = self.loop.call_later(seconds, self._read_timed_out, phase)

    def _read_timed_out(self, phase: str) -> None:
        self._read_timer = None
        transport = self.transport
        if self._lost or transport is None or transport.is_closing():
            return
        log.debug("event=read_timeout phase=%s client=%s", phase, _peer(transport))
        if phase == "headers":
            partial = self._handed and bool(self.conn.trailing_data[0]) and self.conn.our_state is h11.IDLE
            if partial:
                transport.write(HEADERS_TIMED_OUT)
            transport.close()
        else:
            # A stalled body: the answer (if any) is already out or pointless; drop the connection now.
            transport.abort()

    # --- writing -----------------------------------------------------------------------------------------------
    def pause_writing(self) -> None:
        if not self._handed:
            return
        super().pause_writing()
        if self._write_timer is None and not self._lost:
            self._write_timer = self.loop.call_later(self.limits.body_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        if not self._handed:
            return
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if not self._lost and self.transport is not None:
            log.debug("event=write_timeout client=%s", _peer(self.transport))
            self.transport.abort()

    def _cancel_timers(self) -> None:
        for name in ("_read_timer", "_write_timer"):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)
        self._phase = None


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"


class HttpServer(uvicorn.Server):
    """uvicorn's Server for a LabgateConfig: TLS reload, and a start message that says https when it is."""

    config: LabgateConfig

    @property
    def limits(self) -> HttpLimits:
        return self.config.limits

    def reload_tls(self) -> bool:
        """Re-read the certificate and key (new handshakes get them); False when there is no TLS or they fail."""
        return self.config.tls.reload() if self.config.tls is not None else False

    def _log_started_message(self, listeners: Any) -> None:
        # uvicorn would print http:// (it sees a plain listener: TLS is done per connection).
        scheme = "https" if self.config.tls is not None else "http"
        for sock in listeners:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            log.info("event=listening url=%s://%s:%d max_connections=%d header_timeout=%s body_timeout=%s "
                     "nofile=%d", scheme, shown, port, self.limits.max_connections, self.limits.header_timeout,
                     self.limits.body_timeout, self.limits.nofile)


def tls_files(cfg: ServerConfig) -> TlsFiles | None:
    """[server] `cfg`'s certificate and key, loaded (OSError, ssl.SSLError when they cannot be); None for HTTP."""
    return TlsFiles(cfg.tls_cert_file, cfg.tls_key_file) if cfg.tls_cert_file and cfg.tls_key_file else None


def make_server(app: Any, cfg: ServerConfig, *, host: str, port: int, nofile: int | None = None,
                tls: TlsFiles | None = None, **uvicorn_options: Any) -> HttpServer:
    """The server for `app` on host:port with [server] `cfg`'s limits and TLS files (or `tls`, already loaded)."""
    limits = HttpLimits.for_server(cfg, nofile)
    tls = tls or tls_files(cfg)
    uvicorn_options.setdefault("access_log", False)
    # proxy_headers off: uvicorn would otherwise take X-Forwarded-For/-Proto from any loopback client as the truth,
    # letting it choose the address allowed_networks and the audit trail see.
    uvicorn_options.setdefault("proxy_headers", False)
    return HttpServer(LabgateConfig(app, limits=limits, tls=tls, host=host, port=port, **uvicorn_options))
