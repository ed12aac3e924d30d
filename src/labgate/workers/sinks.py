"""Where events go: the `[[sink]]` config models, and the syslog (UDP, TCP, TLS), JSON-lines file and webhook
transports the EventBus feeds.

A sink only knows how to send one batch, in order, and raises when it cannot (DeliveryError(delivered=k) when the
first k arrived). Buffering, retries, backoff and counting belong to the bus (events.py), so every transport gets
the same guarantees. Each sink is used by one thread only, except abort(), which may come from stop().
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Sequence, Union
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from labgate import __version__
from labgate.inline_secrets import refuse_inline_secrets
from labgate.events import KIND_RE, Event
from labgate.workers.events import DeliveryError, DeliveryPolicy
from labgate.workers.syslog import FACILITIES, SD_ID, SD_NAME_RE, SEVERITIES, SyslogFormat, frame

SINK_NAME_RE = r"^[a-z][a-z0-9_-]{0,31}$"
# Keys people write when they mean a secret; refused with a hint instead of pydantic's bare "extra input".
# How long a new TLS connection is watched for the collector refusing our certificate (TLS 1.3, see _connect).
TLS_VERDICT_SECONDS = 0.3
INLINE_SECRET_KEYS = ("token", "password", "secret", "key", "bearer", "authorization")


# --- configuration ------------------------------------------------------------------------------------------------

def _readable_file(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ValueError(f"{what} {path!r} cannot be read: {exc.strerror or exc}") from None
    return path


class _SinkConfigBase(BaseModel):
    """Fields every [[sink]] has: its name (the `sink` label in metrics and stats) and its delivery policy."""

    # hide_input_in_errors: a config error must not echo a secret someone pasted inline.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    # Default: "<type>-<n>", numbered per type in file order ("syslog-1", "syslog-2", "file-1").
    name: str | None = Field(default=None, pattern=SINK_NAME_RE)
    # Events held while the destination is down or slow; beyond it the oldest are dropped (and counted).
    buffer: int = Field(default=10_000, ge=1, le=10_000_000)
    batch: int = Field(default=100, ge=1, le=10_000)
    # Retry delay: starts at retry_initial seconds, doubles up to retry_max, with jitter.
    retry_initial: float = Field(default=0.5, gt=0, le=3600)
    retry_max: float = Field(default=30.0, gt=0, le=3600)
    # Only these event kinds (e.g. ["health"]); absent = every kind.
    kinds: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        return refuse_inline_secrets(data, INLINE_SECRET_KEYS,
                                     "sink setting '{key}' is not accepted: secrets are read from files "
                                     "(token_file, key_file), never written in labgate.toml")

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("kinds must name at least one kind (leave it out for every kind)")
            bad = [k for k in v if not KIND_RE.fullmatch(k)]
            if bad:
                raise ValueError(f"kinds {bad} are not event kinds (e.g. 'connection', 'health')")
        return v

    @model_validator(mode="after")
    def _retry(self) -> "_SinkConfigBase":
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must be >= retry_initial")
        return self

    def policy(self) -> DeliveryPolicy:
        return DeliveryPolicy(buffer=self.buffer, max_batch=self.batch, retry_initial=self.retry_initial,
                              retry_max=self.retry_max, kinds=frozenset(self.kinds) if self.kinds else None)


class SyslogSinkConfig(_SinkConfigBase):
    """`type = "syslog"`: RFC 5424 to a remote collector over UDP, TCP (octet counting, RFC 6587) or TLS."""

    type: Literal["syslog"]
    transport: Literal["udp", "tcp", "tls"] = "tcp"
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.:-]+$")
    port: int | None = Field(default=None, ge=1, le=65535)  # default 514 (udp, tcp) or 6514 (tls, RFC 5425)
    facility: str = "local0"
    severity: str = "info"
    hostname: str | None = None  # the HOSTNAME field; default: this machine's host name
    sd_id: str = SD_ID  # "labgate@32473": 32473 is RFC 5612's example number; use your own PEN if you have one
    max_message_size: int = Field(default=8192, ge=480, le=65000)
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    send_timeout: float = Field(default=10.0, gt=0, le=300)
    # TLS only: CA bundle to verify the collector (default: the system's), client certificate and key for mutual
    # TLS, and the name to check in the collector's certificate (default: host).
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    @field_validator("facility")
    @classmethod
    def _facility(cls, v: str) -> str:
        if v not in FACILITIES:
            raise ValueError(f"facility must be one of {', '.join(FACILITIES)}")
        return v

    @field_validator("severity")
    @classmethod
    def _severity(cls, v: str) -> str:
        if v not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
        return v

    @field_validator("sd_id")
    @classmethod
    def _sd_id(cls, v: str) -> str:
        if not SD_NAME_RE.fullmatch(v) or "@" not in v:
            raise ValueError("sd_id must look like 'name@<private enterprise number>', e.g. labgate@32473")
        return v

    @model_validator(mode="after")
    def _tls(self) -> "SyslogSinkConfig":
        tls_only = [k for k in ("ca_file", "cert_file", "key_file", "server_name") if getattr(self, k) is not None]
        if self.transport != "tls" and tls_only:
            raise ValueError(f"{', '.join(tls_only)} only apply to transport = \"tls\"")
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file (the client certificate)")
        _readable_file(self.ca_file, "ca_file")
        _readable_file(self.cert_file, "cert_file")
        _readable_file(self.key_file, "key_file")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or (6514 if self.transport == "tls" else 514)


class FileSinkConfig(_SinkConfigBase):
    """`type = "file"`: one JSON object per line, rotated by size to path.1 ... path.<backups>."""

    type: Literal["file"]
    path: str = Field(min_length=1)
    max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    backups: int = Field(default=5, ge=1, le=1000)


class WebhookSinkConfig(_SinkConfigBase):
    """`type = "webhook"`: POST {"events": [...]} as JSON; any 2xx is delivered, anything else is retried."""

    type: Literal["webhook"]
    url: str
    token_file: str | None = None  # sent as "Authorization: Bearer <first line of the file>"
    ca_file: str | None = None
    timeout: float = Field(default=10.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("url must not carry credentials; put a bearer token in token_file")
        return v

    @model_validator(mode="after")
    def _files(self) -> "WebhookSinkConfig":
        _readable_file(self.token_file, "token_file")
        _readable_file(self.ca_file, "ca_file")
        return self


SinkConfig = Annotated[Union[SyslogSinkConfig, FileSinkConfig, WebhookSinkConfig], Field(discriminator="type")]


def sink_names(configs: Sequence[SyslogSinkConfig | FileSinkConfig | WebhookSinkConfig]) -> list[str]:
    """The name of each configured sink (explicit, or "<type>-<n>"); raises ValueError if two are equal."""
    counts: dict[str, int] = {}
    names: list[str] = []
    for cfg in configs:
        counts[cfg.type] = counts.get(cfg.type, 0) + 1
        names.append(cfg.name or f"{cfg.type}-{counts[cfg.type]}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"sink name {dupes[0]!r} is used twice; give each [[sink]] its own name")
    return names


def build_sinks(configs: Sequence[SyslogSinkConfig | FileSinkConfig | WebhookSinkConfig]) -> list["Sink"]:
    """One Sink per config, in order. Raises ValueError for duplicate names or unusable TLS material.

    Nothing connects here: the first delivery does, so a collector that is down at start is only a retry."""
    sinks: list[Sink] = []
    for name, cfg in zip(sink_names(configs), configs):
        policy = cfg.policy()
        if isinstance(cfg, SyslogSinkConfig):
            fmt = SyslogFormat(hostname=cfg.hostname or socket.gethostname(), facility=FACILITIES[cfg.facility],
                               severity=SEVERITIES[cfg.severity], sd_id=cfg.sd_id, max_size=cfg.max_message_size)
            if cfg.transport == "udp":
                sinks.append(SyslogUdpSink(name, cfg.host, cfg.effective_port, fmt, policy=policy,
                                           send_timeout=cfg.send_timeout))
            else:
                context = tls_client_context(cfg.ca_file, cfg.cert_file, cfg.key_file) if cfg.transport == "tls" \
                    else None
                sinks.append(SyslogStreamSink(name, cfg.host, cfg.effective_port, fmt, policy=policy, tls=context,
                                              server_name=cfg.server_name, connect_timeout=cfg.connect_timeout,
                                              send_timeout=cfg.send_timeout))
        elif isinstance(cfg, FileSinkConfig):
            sinks.append(JsonLinesFileSink(name, cfg.path, max_bytes=cfg.max_bytes, backups=cfg.backups,
                                           policy=policy))
        else:
            sinks.append(WebhookSink(name, cfg.url, token_file=cfg.token_file, ca_file=cfg.ca_file,
                                     timeout=cfg.timeout, policy=policy))
    return sinks


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


# --- transports -----------------------------------------------------------------------------------------------------

class Sink:
    """A destination for events. Subclasses implement send(); the bus calls it from one thread."""

    type: ClassVar[str] = "sink"

    def __init__(self, name: str, policy: DeliveryPolicy | None = None) -> None:
        self.name = name
        self.policy = policy or DeliveryPolicy()

    @property
    def connected(self) -> bool:
        """Whether the destination looked reachable at the last attempt (a stream: the connection is open)."""
        return False

    def send(self, events: Sequence[Event]) -> None:
        """Deliver `events` in order; raise (ideally DeliveryError with `delivered`) if not all of them arrived."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the connection or file; the next send() opens it again."""

    def abort(self) -> None:
        """Called from another thread when send() is stuck past stop()'s deadline: unblock it if possible."""
        self.close()


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
        try:
            readable, _, _ = select.select([sock], [], [], wait)
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


class JsonLinesFileSink(Sink):
    """Event.to_json() lines appended to `path`; when the next line would pass max_bytes the file is renamed to
    path.1 (path.1 to path.2, ...) and a new one started.

    Lines are never lost or torn: rotation is renames only, a failed write is cut back to the last whole line,
    and a file moved away by someone else (logrotate) is noticed and `path` created again. Only `backups` old
    files are kept: the oldest beyond that is deleted, by design."""

    type = "file"

    def __init__(self, name: str, path: str | os.PathLike[str], *, max_bytes: int = 100 * 1024 * 1024,
                 backups: int = 5, policy: DeliveryPolicy | None = None) -> None:
        super().__init__(name, policy)
        if backups < 1:
            raise ValueError("backups must be at least 1 (rotation would delete lines)")
        self.path = Path(path)
        self.max_bytes, self.backups = max_bytes, backups
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._size = 0

    @property
    def connected(self) -> bool:
        return self._fd is not None

    def _open(self) -> None:
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(fd)
        self._fd, self._identity, self._size = fd, (st.st_dev, st.st_ino), st.st_size

    def _ensure_current(self) -> None:
        if self._fd is not None:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._identity:
                    self._size = os.fstat(self._fd).st_size  # someone may have truncated it (copytruncate)
                    return
            except FileNotFoundError:
                pass
            self.close()
        self._open()

    def _rotate(self) -> None:
        self.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        start = self._size
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            try:
                os.ftruncate(self._fd, start)  # no torn line: the batch is written again whole
            except OSError:
                pass
            raise
        self._size = start + len(data)

    def send(self, events: Sequence[Event]) -> None:
        lines = [(event.to_json() + "\n").encode("utf-8") for event in events]
        done = 0
        try:
            self._ensure_current()
            while done < len(lines):
                room = self.max_bytes - self._size
                end, size = done, 0
                while end < len(lines) and size + len(lines[end]) <= room:
                    size += len(lines[end])
                    end += 1
                if end == done:
                    if self._size > 0:
                        self._rotate()
                        continue
                    end = done + 1  # one line longer than max_bytes gets a file of its own
                self._write(b"".join(lines[done:end]))
                done = end
        except OSError as exc:
            self.close()
            raise DeliveryError(f"writing {self.path}: {exc.strerror or exc}", delivered=done) from None

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


class WebhookSink(Sink):
    """POST {"events": [event, ...]} (JSON, Event.to_dict() each) to a URL; a 2xx answer means delivered.

    The bearer token is read from token_file at every request (a rotated token needs no restart). Errors name
    only the URL's scheme, host and port: webhook paths often carry secrets."""

    type = "webhook"

    def __init__(self, name: str, url: str, *, token_file: str | None = None, ca_file: str | None = None,
                 timeout: float = 10.0, policy: DeliveryPolicy | None = None) -> None:
        import httpx

        super().__init__(name, policy)
        self.url, self.token_file = url, token_file
        parts = urlsplit(url)
        self._where = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
        self._verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.timeout = timeout
        self._client: httpx.Client | None = None
        self._ok = False

    @property
    def connected(self) -> bool:
        return self._ok

    def _token(self) -> str:
        assert self.token_file is not None
        try:
            token = Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise DeliveryError(f"token_file cannot be read: {exc.strerror or exc}") from None
        if not token:
            raise DeliveryError("token_file is empty")
        return token

    def send(self, events: Sequence[Event]) -> None:
        import httpx

        self._ok = False
        headers = {"Content-Type": "application/json"}
        if self.token_file:
            headers["Authorization"] = f"Bearer {self._token()}"
        body = ('{"events":[' + ",".join(event.to_json() for event in events) + "]}").encode("utf-8")
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, verify=self._verify, follow_redirects=False,
                                        headers={"User-Agent": f"labgate/{__version__}"})
        try:
            response = self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"POST {self._where}: {type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"POST {self._where}: HTTP {response.status_code}")
        self._ok = True

    def close(self) -> None:
        client, self._client = self._client, None
        self._ok = False
        if client is not None:
            client.close()
