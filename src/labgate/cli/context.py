"""The client's own configuration: named contexts (url, token, default gateway, host), like kubectl's.

File: $LABGATE_CLIENT_CONFIG, else $XDG_CONFIG_HOME/labgate/config.toml, else ~/.config/labgate/config.toml,
written with mode 0600 because it holds tokens. LABGATE_URL / LABGATE_TOKEN override the chosen context.

    current = "lab"
    [contexts.lab]
    url = "http://gw.example.net:3000"
    token = "lg_..."
    gateway = "default"            # optional: used when a command names none
    host = "alice.lab.example.net" # optional: what `connect` dials instead of the gateway's external address
    [kinds.onefs]                  # optional: per-kind protocol -> target port overrides for `connect`
    https = 8080
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labgate.client.errors import ConfigError, ValidationFailed

CONTEXT_KEYS = ("url", "token", "gateway", "host")


def config_path() -> Path:
    explicit = os.environ.get("LABGATE_CLIENT_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "labgate" / "config.toml"


@dataclass
class Context:
    name: str
    url: str | None = None
    token: str | None = None
    gateway: str | None = None
    host: str | None = None


# Earlier labgate versions wrote characters outside the BMP (an emoji) as JSON surrogate pairs ("\\ud83e\\udd8a"),
# which TOML refuses; such a file is read by joining each pair into the one character it meant.
_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})")


def fix_hint(path: Path) -> str:
    return (f"correct that place in {path} with a text editor (TOML syntax: https://toml.io); the rest of the file "
            "can stay as it is")


def _join_surrogates(text: str) -> str:
    def joined(m: re.Match[str]) -> str:
        high, low = int(m.group(2), 16), int(m.group(3), 16)
        return f"{m.group(1)}\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08X}"

    return _SURROGATE_PAIR.sub(joined, text)


def _check_shape(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The file parsed, but is it shaped like a client config? Otherwise say where it is not."""
    if "current" in data and not isinstance(data["current"], str):
        raise ConfigError(f"{path}: 'current' must be a context name (a string)", hint=fix_hint(path))
    for section in ("contexts", "kinds"):
        tables = data.get(section, {})
        if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
            raise ConfigError(f"{path}: [{section}] must hold tables like [{section}.NAME]", hint=fix_hint(path))
    for name, table in data.get("contexts", {}).items():
        for key in CONTEXT_KEYS:
            if key in table and not isinstance(table[key], str):
                raise ConfigError(f"{path}: {key} of context {name!r} must be a string", hint=fix_hint(path))
    return data


def load() -> dict[str, Any]:
    """The client config, {} when there is none. An unreadable file is a ConfigError naming the file, the place
    and how to fix it (never "delete it")."""
    path = config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}",
                          hint=f"check the permissions of {path} (it should be yours, mode 0600)") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} is not UTF-8 text (line {line}, byte {exc.start})", hint=fix_hint(path)) from None
    try:
        return _check_shape(path, tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        repaired = _join_surrogates(text)
        if repaired != text:
            try:
                return _check_shape(path, tomllib.loads(repaired))
            except tomllib.TOMLDecodeError:
                pass
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint=fix_hint(path)) from None


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_string(text: str, what: str) -> str:
    """A TOML basic string: every character as itself (emoji included, the file is UTF-8) except the quote, the
    backslash and control characters, which are escaped. Text that is not Unicode (a lone surrogate: bytes that
    were not UTF-8 on the command line) cannot be written and is refused."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValidationFailed(f"{what} {text!r} is not valid text (it holds bytes that are not UTF-8)",
                                   hint="give it as UTF-8 text")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any, what: str = "a value") -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return _toml_string(str(value), what)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key, "the name")


def dump(data: dict[str, Any]) -> str:
    lines = []
    if "current" in data:
        lines.append(f"current = {_toml_value(data['current'], 'the context name')}")
    for section in ("contexts", "kinds"):
        for name, table in sorted(data.get(section, {}).items()):
            lines.append(f"\n[{section}.{_toml_key(name)}]")
            for key, value in table.items():
                if value is not None:
                    lines.append(f"{_toml_key(key)} = {_toml_value(value, key)}")
    return "\n".join(lines) + "\n"


def save(data: dict[str, Any]) -> Path:
    """Write atomically with mode 0600 (folder 0700): the file holds tokens."""
    path = config_path()
    text = dump(data)  # before touching anything: a value that cannot be written leaves the file as it was
    tomllib.loads(text)  # what is written can be read back, always
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".toml")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# host:port without a scheme: a DNS name, an IPv4 address or a bracketed IPv6 address, then a port.
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?):([0-9]{1,5})/?$")
URL_EXAMPLE = "http://gw.example.net:3000 or https://gw.example.net"


def normalize_url(url: str, source: str = "--url", *, usage: bool = True) -> str:
    """The labgate API URL to use, from what the user gave in `source` (--url, LABGATE_URL, a context).

    `http://` or `https://` URLs are kept (without a trailing slash); a bare `host:port` gets `http://` in front,
    with a note on stderr saying so; anything else is refused (exit 2) with a message naming `source` - never
    left to fail later as "server unreachable". `usage`: raise ValidationFailed (a bad option) rather than
    ConfigError (a bad setting); both exit 2.
    """
    error = ValidationFailed if usage else ConfigError
    raw = url.strip()
    if not raw:
        raise error(f"{source} is empty: it must be the labgate API's URL", hint=f"e.g. {URL_EXAMPLE}")
    if any(ch.isspace() for ch in raw):
        raise error(f"{source} {raw!r} is not a URL: it contains spaces", hint=f"e.g. {URL_EXAMPLE}")
    if "://" not in raw:
        m = _HOST_PORT.match(raw)
        if m and 0 < int(m.group(3)) < 65536:
            fixed = "http://" + raw.rstrip("/")
            from labgate.cli.output import note

            note(f"{source} {raw} has no scheme: using {fixed} (write https:// for TLS)")
            return fixed
        raise error(f"{source} {raw!r} is not a URL: it must start with http:// or https://",
                    hint=f"e.g. {URL_EXAMPLE}")
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme.lower() not in ("http", "https"):
        raise error(f"{source} {raw!r} has scheme {parts.scheme + '://'!r}: labgate speaks http:// or https:// only",
                    hint=f"e.g. {URL_EXAMPLE}")
    try:
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise error(f"{source} {raw!r} is not a valid URL: {exc}", hint=f"e.g. {URL_EXAMPLE}") from None
    if not host:
        raise error(f"{source} {raw!r} has no host name", hint=f"e.g. {URL_EXAMPLE}")
    if port == 0:
        raise error(f"{source} {raw!r} has port 0", hint=f"e.g. {URL_EXAMPLE}")
    if parts.query or parts.fragment:
        raise error(f"{source} {raw!r} must not have a query or fragment (?... #...)",
                    hint=f"e.g. {URL_EXAMPLE}")
    return raw.rstrip("/")


def resolve(name: str | None = None) -> Context:
    """The context to use: `name`, else the file's current one; then LABGATE_URL/LABGATE_TOKEN on top."""
    data = load()
    contexts = data.get("contexts", {})
    name = name or os.environ.get("LABGATE_CONTEXT") or None
    chosen = name or data.get("current")
    if name and name not in contexts and not os.environ.get("LABGATE_URL"):
        raise ConfigError(f"no context named {name!r} in {config_path()}",
                          hint="see `labgate context ls`, or create it with `labgate login --context NAME`")
    ctx = Context(chosen or "default", **{k: contexts.get(chosen, {}).get(k) for k in CONTEXT_KEYS})
    env_url = os.environ.get("LABGATE_URL")
    if env_url:
        ctx.url = normalize_url(env_url, "LABGATE_URL", usage=False)
    elif ctx.url:
        ctx.url = normalize_url(str(ctx.url), f"the url of context {ctx.name!r} in {config_path()}", usage=False)
    ctx.token = os.environ.get("LABGATE_TOKEN") or ctx.token
    if not ctx.url:
        raise ConfigError("no labgate server configured")
    return ctx


def kind_ports(kind: str | None) -> dict[str, int]:
    """Per-kind protocol -> port overrides from the config file."""
    if not kind:
        return {}
    table = load().get("kinds", {}).get(kind, {})
    return {str(k): int(v) for k, v in table.items() if isinstance(v, int)}
