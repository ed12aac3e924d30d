"""The [[sink]] tables: where events go (syslog over UDP, TCP or TLS; a JSON-lines file; a webhook), and the
syslog vocabulary they are checked against. Configuration only: the transports are in labgate/workers/sinks/,
built from these models by `build_sinks`."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Sequence, Union
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from labgate.events import KIND_RE
from labgate.inline_secrets import refuse_inline_secrets

SINK_NAME_RE = r"^[a-z][a-z0-9_-]{0,31}$"
# Keys people write when they mean a secret; refused with a hint instead of pydantic's bare "extra input".
INLINE_SECRET_KEYS = ("token", "password", "secret", "key", "bearer", "authorization")

# --- syslog vocabulary (RFC 5424) ----------------------------------------------------------------------------------

# RFC 5612 reserves enterprise number 32473 for documentation; a site with its own PEN can configure it.
SD_ID = "labgate@32473"
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7, "uucp": 8,
    "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "audit": 13, "alert": 14, "clock": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}
SEVERITIES = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}
# SD-NAME (RFC 5424 6.3.2): 1-32 printable US-ASCII characters except '=', SP, ']' and '"'.
SD_NAME_RE = re.compile(r'^[!#-<>-\\^-~]{1,32}$')


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

    @field_validator("facility", "severity")
    @classmethod
    def _syslog_name(cls, v: str, info: ValidationInfo) -> str:
        names = FACILITIES if info.field_name == "facility" else SEVERITIES
        if v not in names:
            raise ValueError(f"{info.field_name} must be one of {', '.join(names)}")
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
