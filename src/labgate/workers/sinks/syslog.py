"""Events to syslog collectors: RFC 5424 messages, sent over UDP (RFC 5426), or over TCP with RFC 6587
octet-counting framing, optionally inside TLS (RFC 5425).

The formatting is pure functions, no I/O: `SyslogFormat(hostname=...).message(event)` is the exact bytes a
collector receives over UDP, `frame(message)` what goes on a TCP or TLS stream. Print them to see what is sent.

    <134>1 2024-05-01T12:00:00.123456Z gw1 labgate 4242 connection [labgate@32473 seq="17" gateway="lab" ...] tcp ...
    PRI    TIMESTAMP (UTC, microseconds)  HOST APP  PROCID MSGID=kind STRUCTURED-DATA (the event's fields)     MSG
"""

from __future__ import annotations

import os
import re
import select
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Sequence

from labgate.config.sinks import FACILITIES, SD_ID, SD_NAME_RE, SEVERITIES
from labgate.events import Event, describe
from labgate.workers.sinks.base import DeliveryError, DeliveryPolicy, Sink

APP_NAME = "labgate"
BOM = b"\xef\xbb\xbf"
# How long a new TLS connection is watched for the collector refusing our certificate (TLS 1.3, see _connect).
TLS_VERDICT_SECONDS = 0.3

# --- RFC 5424 messages ---------------------------------------------------------------------------------------------

_NON_PRINTUSASCII = re.compile(r"[^!-~]")
_SD_ESCAPE = re.compile(r'(["\\\]])')


def escape_param_value(value: str) -> str:
    """PARAM-VALUE escaping (RFC 5424 6.3.3): a backslash before every '"', '\\' and ']'."""
    return _SD_ESCAPE.sub(r"\\\1", value)


def header_field(value: str, max_length: int) -> str:
    """A HOSTNAME/APP-NAME/PROCID/MSGID token: printable US-ASCII only ('_' for others), '-' (NILVALUE) if empty."""
    value = _NON_PRINTUSASCII.sub("_", value)[:max_length]
    return value or "-"


def format_timestamp(event: Event) -> str:
    """RFC 5424 TIMESTAMP in UTC with microseconds: 2024-05-01T12:00:00.123456Z."""
    return event.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _param_value(value: object) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return escape_param_value(str(value))


def structured_data(event: Event, sd_id: str = SD_ID) -> str:
    """One SD-ELEMENT: the event's seq and every non-null field as SD-PARAMs, values escaped."""
    params = [f'seq="{event.seq}"']
    params += [f'{name}="{_param_value(value)}"' for name, value in event.fields.items() if value is not None]
    return f"[{sd_id} {' '.join(params)}]"


def _truncate_utf8(data: bytes, size: int) -> bytes:
    """The longest prefix of `data` of at most `size` bytes that does not cut a UTF-8 character."""
    return data[:max(size, 0)].decode("utf-8", "ignore").encode("utf-8")


def frame(message: bytes) -> bytes:
    """RFC 6587 3.4.1 octet counting: 'LEN SP MSG', so messages on a stream are never merged or split."""
    return b"%d %s" % (len(message), message)


@dataclass(frozen=True)
class SyslogFormat:
    """How events become RFC 5424 messages for one sink. `message()` never raises for a valid Event."""

    hostname: str
    facility: int = FACILITIES["local0"]
    severity: int = SEVERITIES["info"]
    app_name: str = APP_NAME
    sd_id: str = SD_ID
    # Longer messages lose the end of MSG first (rsyslog's default limit is 8 KiB; RFC 5426 asks for 2 KiB on UDP).
    max_size: int = 8192

    def __post_init__(self) -> None:
        if not SD_NAME_RE.fullmatch(self.sd_id):
            raise ValueError(f"SD-ID {self.sd_id!r} is not a valid RFC 5424 SD-NAME")
        if not (0 <= self.facility <= 23 and 0 <= self.severity <= 7):
            raise ValueError("facility must be 0-23 and severity 0-7")

    def message(self, event: Event) -> bytes:
        header = "<%d>1 %s %s %s %s %s" % (
            self.facility * 8 + self.severity,
            format_timestamp(event),
            header_field(self.hostname, 255),
            header_field(self.app_name, 48),
            header_field(str(os.getpid()), 128),
            header_field(event.kind, 32),
        )
        head = f"{header} {structured_data(event, self.sd_id)}".encode("utf-8")
        text = describe(event)
        # MSG-UTF8 needs the BOM (RFC 5424 6.4); pure ASCII goes as MSG-ANY without it.
        body = text.encode("ascii") if text.isascii() else BOM + text.encode("utf-8")
        room = self.max_size - len(head) - 1
        if room <= len(BOM):
            return _truncate_utf8(head, self.max_size)
        if len(body) > room:
            body = _truncate_utf8(body, room)
        return head + b" " + body


# --- transports ---------------------------------------------------------------------------------------------------

def tls_client_context(ca_file: str | None, cert_file: str | None = None, key_file: str | None = None
                       ) -> ssl.SSLContext:
    """Verify the collector (CA file or the system store, host name checked), TLS 1.2+, optional client cert."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_file:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        # The message names the file kind, never its contents.
        raise ValueError(f"TLS files for a syslog sink are unusable: {exc}") from None
    return context


class SyslogUdpSink(Sink):
    """One RFC 5424 message per datagram (RFC 5426). Fire and forget: 'delivered' means handed to the kernel."""

    type = "syslog/udp"

    def __init__(self, name: str, host: str, port: int, fmt: SyslogFormat, *, policy: DeliveryPolicy | None = None,
                 send_timeout: float = 10.0) -> None:
        super().__init__(name, policy)
        self.host, self.port, self.format, self.send_timeout = host, port, fmt, send_timeout
        self._sock: socket.socket | None = None
        self._addr: Any = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def _open(self) -> None:
        try:
            family, _, _, _, addr = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
        except OSError as exc:
            raise DeliveryError(f"resolving {self.host}: {exc}") from None
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.settimeout(self.send_timeout)
        self._sock, self._addr = sock, addr

    def send(self, events: Sequence[Event]) -> None:
        if self._sock is None:
            self._open()
        assert self._sock is not None
        for i, event in enumerate(events):
            try:
                self._sock.sendto(self.format.message(event), self._addr)
            except OSError as exc:
                self.close()  # the next attempt resolves the name again
                raise DeliveryError(f"sending to {self.host}:{self.port}/udp: {exc}", delivered=i) from None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class SyslogStreamSink(Sink):
    """RFC 5424 over TCP with octet-counting framing (RFC 6587), optionally inside TLS (RFC 5425).

    A batch is one sendall() of framed messages. Before each batch the connection is checked for a close from the
    collector (it never sends us anything, so readable means EOF or reset) and reopened: a restarted collector
    then gets the batch instead of a dead socket swallowing it. A write that times out closes the connection and
    the whole batch is sent again on a new one, so a collector may see a message twice, never a half message."""

    def __init__(self, name: str, host: str, port: int, fmt: SyslogFormat, *, policy: DeliveryPolicy | None = None,
                 tls: ssl.SSLContext | None = None, server_name: str | None = None, connect_timeout: float = 5.0,
                 send_timeout: float = 10.0) -> None:
        super().__init__(name, policy)
        self.host, self.port, self.format = host, port, fmt
        self.tls, self.server_name = tls, server_name
        self.connect_timeout, self.send_timeout = connect_timeout, send_timeout
        self._sock: socket.socket | None = None

    @property
    def type(self) -> str:  # type: ignore[override]
        return "syslog/tls" if self.tls else "syslog/tcp"

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def _where(self) -> str:
        return f"{self.host}:{self.port}/{'tls' if self.tls else 'tcp'}"

    def _connect(self) -> None:
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise DeliveryError(f"connecting to {self._where()}: {exc}") from None
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock: socket.socket = raw
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(raw, server_hostname=self.server_name or self.host)
            except OSError as exc:  # ssl.SSLError and certificate errors are OSErrors
                raw.close()
                raise DeliveryError(f"TLS handshake with {self._where()}: {exc}") from None
            # TLS 1.3: the client's handshake is over before the collector has checked our certificate; if it
            # refuses it, it closes the connection a moment later, and a batch sent now would vanish.
            if self._closed_within(sock, TLS_VERDICT_SECONDS):
                sock.close()
                raise DeliveryError(f"TLS session with {self._where()} closed by the collector right after the "
                                    "handshake (is our client certificate accepted?)")
        sock.settimeout(self.send_timeout)
        self._sock = sock

    def _closed_within(self, sock: socket.socket, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._peer_closed(sock, wait=left):
                return True
        return False

    def _peer_closed(self, sock: socket.socket, wait: float = 0.0) -> bool:
        """Whether the collector closed or reset the connection (it never sends data: readable means closed)."""
        # poll, not select: labgate raises its descriptor limit, and select() refuses descriptors above 1023.
        poller = select.poll()
        try:
            poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
            readable = poller.poll(wait * 1000)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        sock.setblocking(False)
        try:
            return sock.recv(4096) == b""
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False  # e.g. a TLS 1.3 session ticket: not application data, the connection is fine
        except OSError:
            return True
        finally:
            sock.settimeout(self.send_timeout)

    def send(self, events: Sequence[Event]) -> None:
        if self._sock is not None and self._peer_closed(self._sock):
            self.close()
        if self._sock is None:
            self._connect()
        assert self._sock is not None
        data = b"".join(frame(self.format.message(event)) for event in events)
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self.close()
            raise DeliveryError(f"sending to {self._where()}: {exc or type(exc).__name__}") from None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if isinstance(sock, ssl.SSLSocket):
            try:  # a clean TLS close (close_notify), so the collector does not log a protocol error
                sock.settimeout(0.5)
                sock = sock.unwrap()
            except (OSError, ValueError):
                pass
        sock.close()

    def abort(self) -> None:
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a sendall() blocked in another thread
            except OSError:
                pass
