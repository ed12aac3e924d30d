"""RFC 5424 syslog messages for events, and RFC 6587 octet-counting framing for stream transports.

Pure functions, no I/O: `SyslogFormat(hostname=...).message(event)` is the exact bytes a collector receives over UDP,
`frame(message)` what goes on a TCP or TLS stream. Print them to see what is sent.

    <134>1 2024-05-01T12:00:00.123456Z gw1 labgate 4242 connection [labgate@32473 seq="17" gateway="lab" ...] tcp ...
    PRI    TIMESTAMP (UTC, microseconds)  HOST APP  PROCID MSGID=kind STRUCTURED-DATA (the event's fields)     MSG
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labgate.events import Event

# RFC 5612 reserves enterprise number 32473 for documentation; a site with its own PEN can configure it.
SD_ID = "labgate@32473"
APP_NAME = "labgate"
BOM = b"\xef\xbb\xbf"

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7, "uucp": 8,
    "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "audit": 13, "alert": 14, "clock": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}
SEVERITIES = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}

# SD-NAME (RFC 5424 6.3.2): 1-32 printable US-ASCII characters except '=', SP, ']' and '"'.
SD_NAME_RE = re.compile(r'^[!#-<>-\\^-~]{1,32}$')
_NON_PRINTUSASCII = re.compile(r"[^!-~]")
_SD_ESCAPE = re.compile(r'(["\\\]])')


def escape_param_value(value: str) -> str:
    """PARAM-VALUE escaping (RFC 5424 6.3.3): a backslash before every '"', '\\' and ']'."""
    return _SD_ESCAPE.sub(r"\\\1", value)


def header_field(value: str, max_length: int) -> str:
    """A HOSTNAME/APP-NAME/PROCID/MSGID token: printable US-ASCII only ('_' for others), '-' (NILVALUE) if empty."""
    value = _NON_PRINTUSASCII.sub("_", value)[:max_length]
    return value or "-"


def format_timestamp(event: "Event") -> str:
    """RFC 5424 TIMESTAMP in UTC with microseconds: 2024-05-01T12:00:00.123456Z."""
    return event.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _param_value(value: object) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return escape_param_value(str(value))


def structured_data(event: "Event", sd_id: str = SD_ID) -> str:
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

    def message(self, event: "Event") -> bytes:
        from labgate.events import describe

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
