"""Logging: one line per event to stderr, as key=value text or as one JSON object. Secrets are never passed to a
logger.

labgate's log calls write `event=name key=value ...` messages (values of free text through %r, so they are quoted
Python literals). The JSON format keeps that message whole and also parses its key=value pairs into fields of
their own, so a log store can filter on `event` or `gateway` without a parsing rule of its own."""

from __future__ import annotations

import ast
import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any

FORMATS = ("text", "json")
# The fields every JSON line has; a message's own key of the same name is kept as "<key>_".
RESERVED = frozenset({"time", "level", "logger", "message", "exception", "stack"})

_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z_][A-Za-z0-9_.\-]*)=")
_OPEN = {"(": ")", "[": "]", "{": "}"}


def setup_logging(level: str = "info", log_format: str = "text") -> None:
    """Send every log record to stderr, one line each: key=value text (`text`) or a JSON object (`json`).
    Raises ValueError for another format."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: time (UTC, RFC 3339, milliseconds), level, logger, message, the message's
    key=value pairs as fields, and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for key, value in parse_fields(message).items():
            line[f"{key}_" if key in RESERVED else key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def parse_fields(message: str) -> dict[str, Any]:
    """The key=value pairs of a log message. A value is a quoted Python literal (as %r writes it: its text, escapes
    undone), a bracketed one (`[1, 2]`, `KernelError('x')`: the list itself when it is a literal, else its text),
    or else the text up to the next space. Whatever is not a key=value pair (`10.0.0.1/22 -> 10.9.0.5:22`, a
    remark in parentheses) stays in the message only; a key given twice keeps its first value."""
    fields: dict[str, Any] = {}
    pos = 0
    while True:
        match = _KEY.search(message, pos)
        if match is None:
            return fields
        key, start = match.group(1), match.end()
        end = _value_end(message, start)
        raw = message[start:end]
        fields.setdefault(key, _value(raw))
        pos = max(end, start)


def _value_end(text: str, start: int) -> int:
    """Where the value beginning at `start` ends: after its closing quote or bracket, else at the next space."""
    if start >= len(text) or text[start].isspace():
        return start
    i = start
    # An identifier before a bracket belongs to the value: KernelError('x'), frozenset({1}).
    while i < len(text) and (text[i].isalnum() or text[i] in "_."):
        i += 1
    if i < len(text) and text[i] in "'\"" and i == start:
        end = _quote_end(text, i)
        return end if end is not None and (end == len(text) or text[end].isspace()) else _space(text, start)
    if i < len(text) and text[i] in _OPEN:
        end = _bracket_end(text, i)
        if end is not None and (end == len(text) or text[end].isspace() or text[end] in ",;:"):
            return end
    return _space(text, start)


def _space(text: str, start: int) -> int:
    match = re.compile(r"\s").search(text, start)
    return match.start() if match else len(text)


def _quote_end(text: str, i: int) -> int | None:
    """The index after the string literal whose quote is at `i` (backslash escapes honoured), None if unclosed."""
    quote = text[i]
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == quote:
            return j + 1
        j += 1
    return None


def _bracket_end(text: str, i: int) -> int | None:
    """The index after the bracket opened at `i` and closed in balance (quotes inside honoured), None if never."""
    stack = [_OPEN[text[i]]]
    j = i + 1
    while j < len(text):
        c = text[j]
        if c in "'\"":
            end = _quote_end(text, j)
            if end is None:
                return None
            j = end
            continue
        if c in _OPEN:
            stack.append(_OPEN[c])
        elif c == stack[-1]:
            stack.pop()
            if not stack:
                return j + 1
        elif c in ")]}":
            return None
        j += 1
    return None


def _value(raw: str) -> Any:
    """A value as JSON should carry it: literals (strings, numbers, lists, None, True) decoded, anything else as
    its text. Bare words stay text (`state=up`), except integers and decimals, which become numbers."""
    if not raw:
        return ""
    if raw[0] in "'\"[({" or raw in ("None", "True", "False"):
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return raw
    if re.fullmatch(r"-?\d+", raw):
        return int(raw)
    if re.fullmatch(r"-?\d+\.\d+", raw):
        return float(raw)
    return raw
