"""The [[gateway]] tables: where forwards live (a network namespace and its external address) and what they may
use (port ranges, target networks)."""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from labgate.config.ddns import dns_name_text

GATEWAY_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
# "qrouter-<uuid>" is 44 characters; leave room but refuse anything a path or shell could misread.
NETNS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PRIVATE_NETWORKS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
# An interface name as the kernel allows it (IFNAMSIZ 16 with the NUL), minus anything `ip` could misread.
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


@functools.lru_cache(maxsize=256)
def _ranges(texts: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """Parsed once per distinct setting: every create asks (a batch, thousands of times)."""
    return tuple(parse_port_range(r) for r in texts)


@functools.lru_cache(maxsize=256)
def _networks(texts: tuple[str, ...]) -> tuple[ipaddress.IPv4Network, ...]:
    return tuple(ipaddress.IPv4Network(n) for n in texts)


def parse_port_range(text: str) -> tuple[int, int]:
    """'4000-4100' or '4000' -> (4000, 4100); raises ValueError with a readable reason."""
    m = re.fullmatch(r"\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?", text)
    if not m:
        raise ValueError(f"port range {text!r} is not of the form 'LOW-HIGH'")
    low = int(m.group(1))
    high = int(m.group(2) or low)
    if not (1 <= low <= high <= 65535):
        raise ValueError(f"port range {text!r} must satisfy 1 <= LOW <= HIGH <= 65535")
    return low, high


def port_ranges(value: Any, what: str = "port ranges") -> list[str]:
    """'4000-4100' or a list of such, checked (at least one, none overlapping) and sorted as 'LOW-HIGH' text."""
    ranges = [value] if isinstance(value, str) else value
    if not ranges:
        raise ValueError(f"{what}: at least one port range is needed")
    parsed = sorted(parse_port_range(r) for r in ranges)
    for (_, high), (low, _) in zip(parsed, parsed[1:]):
        if low <= high:
            raise ValueError(f"{what}: port ranges overlap")
    return [f"{lo}-{hi}" for lo, hi in parsed]


class GatewayConfig(BaseModel):
    """One place where forwards live: a network namespace and its external address."""

    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    netns: str = ""
    # "auto": the first global IPv4 address of the namespace's default-route interface, read at start.
    external_address: str = "auto"
    port_range: list[str] = Field(default_factory=lambda: ["4000-4999"])
    target_networks: list[str] = Field(default_factory=lambda: list(PRIVATE_NETWORKS))
    masquerade: bool = True
    # The namespace must route (net.ipv4.ip_forward = 1) for any forward to pass. true: labgate turns it on;
    # false: labgate only reports a gateway that does not forward; unset: on for a named namespace labgate is told
    # to manage, report-only for the host's own namespace (whose routing is the host admin's decision).
    enable_forwarding: bool | None = None
    # Dynamic DNS (docs/ddns.md): the name kept pointing at this gateway's address, inside [ddns] zone ...
    dns_name: str | None = None
    # ... and where that address is read: this interface inside the gateway's namespace (its first global IPv4
    # address); unset = external_address (the configured one, or for "auto" the default route's).
    ddns_interface: str | None = None
    # Set by the OpenStack monitor for a router it serves (never in the config file): the router's id and name
    # and its project. Such a gateway may have no target network yet (a router without interfaces).
    router_id: str | None = None
    router_name: str | None = None
    project_id: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not GATEWAY_NAME_RE.fullmatch(v):
            raise ValueError("gateway name must match [a-z][a-z0-9_-]{0,30}")
        return v

    @field_validator("dns_name")
    @classmethod
    def _dns_name(cls, v: str | None) -> str | None:
        return None if v is None else dns_name_text(v, "dns_name")

    @field_validator("ddns_interface")
    @classmethod
    def _ddns_interface(cls, v: str | None) -> str | None:
        if v is not None and not IFNAME_RE.fullmatch(v):
            raise ValueError("ddns_interface must be an interface name (1-15 of letters, digits, '_', '.', ':', '-')")
        return v

    @field_validator("netns")
    @classmethod
    def _netns(cls, v: str) -> str:
        if v and not NETNS_RE.fullmatch(v):
            raise ValueError("netns must be empty (host namespace) or a plain namespace name")
        return v

    @field_validator("external_address")
    @classmethod
    def _external(cls, v: str) -> str:
        if v == "auto":
            return v
        addr = ipaddress.ip_address(v)
        if addr.version != 4:
            raise ValueError("only IPv4 external addresses are supported so far")
        return str(addr)

    @field_validator("port_range", mode="before")
    @classmethod
    def _ranges(cls, v: Any) -> list[str]:
        return port_ranges(v, "port_range")

    @field_validator("target_networks")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        nets = [ipaddress.ip_network(n, strict=False) for n in v]
        if any(n.version != 4 for n in nets):
            raise ValueError("only IPv4 target networks are supported so far")
        return [str(n) for n in nets]

    @model_validator(mode="after")
    def _some_target(self) -> "GatewayConfig":
        if not self.target_networks and self.router_id is None:
            raise ValueError("at least one target network is needed")
        return self

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return list(_ranges(tuple(self.port_range)))

    @property
    def networks(self) -> list[ipaddress.IPv4Network]:
        return list(_networks(tuple(self.target_networks)))

    @property
    def manages_forwarding(self) -> bool:
        """Whether labgate may turn net.ipv4.ip_forward on in this gateway's namespace."""
        return self.enable_forwarding if self.enable_forwarding is not None else bool(self.netns)

    @property
    def table_name(self) -> str:
        """The nftables table labgate owns for this gateway (identifier-safe by construction)."""
        return "labgate_" + self.name.replace("-", "_")
