"""Events: the record of something that happened (a connection forwarded, a forward changed, a target went down),
and the one interface through which the domain announces them. Who delivers them (workers/events.py: the bus and
its sinks) is not known here: core publishes through a `Publisher` it is handed."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Mapping, Protocol, Union

Scalar = Union[str, int, float, bool, None]

# Kinds become the syslog MSGID and field names become SD-PARAM names: both must be short plain ASCII.
KIND_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
FIELD_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
RESERVED_FIELDS = frozenset({"seq", "time", "kind"})
CONNECTION_FIELDS = ("gateway", "forward_id", "owner", "name", "protocol", "src_ip", "src_port", "external_port",
                     "target_ip", "target_port")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _check_scalar(name: str, value: object) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float) and math.isfinite(value):
        return
    raise TypeError(f"event field {name!r} must be a str, int, finite float, bool or None, not {type(value).__name__}")


# Names and kinds already checked: a batch of 10,000 forwards makes 10,000 events with the same eleven names.
# Only names that passed the check get in (a bounded set: names are code, not user input).
_GOOD_KINDS: set[str] = set()
_GOOD_FIELDS: set[str] = set()
_PLAIN = (str, int, bool)


@dataclass(frozen=True)
class Event:
    """Something that happened: a kind, an aware UTC time, flat JSON-safe fields, and the bus's sequence number.

    Construction raises ValueError/TypeError for a bad kind, a naive time or a non-scalar field, so a bug shows
    where the event is made. `seq` is 0 until EventBus.publish() stamps it."""

    kind: str
    time: datetime
    fields: Mapping[str, Scalar] = field(default_factory=dict, hash=False)
    seq: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _GOOD_KINDS:
            if not isinstance(self.kind, str) or not KIND_RE.fullmatch(self.kind):
                raise ValueError(f"event kind {self.kind!r} must match {KIND_RE.pattern}")
            _GOOD_KINDS.add(self.kind)
        if not isinstance(self.time, datetime) or self.time.utcoffset() is None:
            raise ValueError("event time must be an aware datetime")
        if self.time.tzinfo is not timezone.utc:
            object.__setattr__(self, "time", self.time.astimezone(timezone.utc))
        fields = dict(self.fields)
        for name, value in fields.items():
            if name not in _GOOD_FIELDS:
                if not isinstance(name, str) or not FIELD_RE.fullmatch(name) or name in RESERVED_FIELDS:
                    raise ValueError(f"event field name {name!r} must match {FIELD_RE.pattern} and not be "
                                     "seq/time/kind")
                _GOOD_FIELDS.add(name)
            if value is not None and type(value) not in _PLAIN:
                _check_scalar(name, value)
        # Frozen all the way down: one Event object is shared by the ring buffer and every sink's queue.
        object.__setattr__(self, "fields", MappingProxyType(fields))

    @classmethod
    def new(cls, kind: str, /, **fields: Scalar) -> "Event":
        """An event happening now: Event.new("connection", gateway="lab", forward_id=12, src_ip="192.0.2.7", ...)."""
        return cls(kind, datetime.now(timezone.utc), fields)

    def stamped(self, seq: int) -> "Event":
        """The same event with its bus sequence number (already checked: not built again)."""
        copy = object.__new__(Event)
        copy.__dict__.update(self.__dict__)
        object.__setattr__(copy, "seq", seq)
        return copy

    @property
    def time_text(self) -> str:
        """RFC 3339 UTC with microseconds: 2024-05-01T12:00:00.123456Z."""
        return self.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def to_dict(self) -> dict[str, Scalar]:
        """Flat: {"seq", "time", "kind", then the fields}. The field names seq/time/kind are refused, so no clash."""
        return {"seq": self.seq, "time": self.time_text, "kind": self.kind, **self.fields}

    def to_json(self) -> str:
        """One line of compact JSON (UTF-8 text, no newline inside)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def describe(event: Event) -> str:
    """A short human line for the event (syslog MSG): 'tcp 192.0.2.7:51234 -> lab:4001 -> 10.9.0.5:22 ...'."""
    f = event.fields
    if event.kind == "connection" and all(k in f for k in CONNECTION_FIELDS):
        text = (f"{f['protocol']} {f['src_ip']}:{f['src_port']} -> {f['gateway']}:{f['external_port']} -> "
                f"{f['target_ip']}:{f['target_port']} forward {f['forward_id']} ({f['owner']}/{f['name']})")
    else:
        text = " ".join([event.kind] + [f"{k}={v}" for k, v in f.items()])
    return CONTROL_CHARS.sub("?", text)[:512]



class Publisher(Protocol):
    """Takes events; never blocks and never raises (a full or failing delivery path only counts its losses)."""

    def publish(self, event: Event) -> Event | None: ...


class Discard:
    """A Publisher that drops everything: for tools and tests that run the domain without delivery."""

    def publish(self, event: Event) -> None:
        return None
