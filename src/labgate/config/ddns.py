"""The [ddns] section: RFC 2136 updates, signed with TSIG, to one authoritative server (docs/ddns.md); and the
DNS name rule every dns_name and zone follows."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import dns.exception
import dns.name
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from labgate.inline_secrets import refuse_inline_secrets
from labgate.keys import TSIG_ALGORITHMS, TsigKey, load_tsig_key

DDNS_INLINE_SECRET_KEYS = ("secret", "key", "password", "token", "tsig_secret", "key_secret")


def dns_name_text(value: str, what: str) -> str:
    """A DNS name as labgate stores it: lower case, absolute, without the final dot ('lab.example.net')."""
    if not isinstance(value, str) or not value.strip(".") or any(c.isspace() for c in value):
        raise ValueError(f"{what} must be a DNS name such as 'lab.example.net'")
    try:
        name = dns.name.from_text(value.lower())
    except dns.exception.DNSException as exc:
        raise ValueError(f"{what} {value!r} is not a valid DNS name: {exc}") from None
    return name.to_text(omit_final_dot=True)


class DdnsConfig(BaseModel):
    """The [ddns] section: RFC 2136 updates, signed with TSIG, to one authoritative server (docs/ddns.md)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    server: str                              # the primary's IP address (v4 or v6)
    port: int = Field(default=53, ge=1, le=65535)
    zone: str                                # gateways' dns_name live in this zone
    key_name: str | None = None              # default: the name in key_file's key block
    key_algorithm: str | None = None         # default: the algorithm in key_file's key block
    key_file: str                            # the secret: never inline, never logged, never returned by the API
    ttl: int = Field(default=60, ge=0, le=86400)
    # ddns_refresh: every record is sent again this often even when nothing changed (repairs hand edits).
    refresh: float = Field(default=120.0, gt=0)
    # How often the gateways' addresses (and the forwards, for machine records) are looked at.
    check_interval: float = Field(default=5.0, gt=0)
    timeout: float = Field(default=5.0, gt=0)  # per update (TCP connect + answer)
    retry_initial: float = Field(default=1.0, gt=0)
    retry_max: float = Field(default=60.0, gt=0)
    # Optional: a zone for machines: <machine name>.<machine_zone> A -> its addresses while it has enabled forwards,
    # and one TXT record per forward ("tcp/22 -> alice.lab.example.net:4000"). May be the same as `zone`.
    machine_zone: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secret(cls, data: Any) -> Any:
        return refuse_inline_secrets(data, DDNS_INLINE_SECRET_KEYS,
                                     "ddns.{key} is not accepted: the TSIG secret is only read from a file named by "
                                     "ddns.key_file (e.g. the output of `tsig-keygen -a hmac-sha256 NAME`)")

    @field_validator("server")
    @classmethod
    def _server(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_address(v.strip("[]")))
        except ValueError:
            raise ValueError("ddns.server must be an IP address (the zone's primary server)") from None

    @field_validator("zone", "machine_zone")
    @classmethod
    def _zone(cls, v: str | None, info: Any) -> str | None:
        return None if v is None else dns_name_text(v, f"ddns.{info.field_name}")

    @field_validator("key_name")
    @classmethod
    def _key_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}\.?", v):
            raise ValueError("ddns.key_name must be a key name such as 'labgate-ddns' (letters, digits, '.', '_', '-')")
        return None if v is None else v.rstrip(".").lower()

    @field_validator("key_algorithm")
    @classmethod
    def _algorithm(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in TSIG_ALGORITHMS:
            raise ValueError(f"ddns.key_algorithm must be one of {', '.join(TSIG_ALGORITHMS)}")
        return None if v is None else v.lower()

    @model_validator(mode="after")
    def _checks(self) -> "DdnsConfig":
        if self.retry_max < self.retry_initial:
            raise ValueError("ddns.retry_max must not be less than ddns.retry_initial")
        key = self.load_key()  # fail at start, not at the first update
        self.key_name, self.key_algorithm = key.name, key.algorithm
        return self

    def load_key(self) -> TsigKey:
        """Read key_file now (it is read again before every update, so a rotated secret needs no restart)."""
        return load_tsig_key(self.key_file, self.key_name, self.key_algorithm)

    @property
    def server_text(self) -> str:
        return f"[{self.server}]:{self.port}" if ":" in self.server else f"{self.server}:{self.port}"
