"""Checks on user input that need domain knowledge (types and lengths are checked by the API schemas)."""

from __future__ import annotations

import functools
import ipaddress
import re
import uuid
from typing import Iterable

from labgate.config import GatewayConfig
from labgate.core.errors import InvalidInput

NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})$")
KIND_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,31})$")
OWNER_RE = re.compile(r"^[a-z_][a-z0-9_.@-]{0,63}$")
MAX_SOURCES = 64
MAX_PORT_COUNT = 1024


def check_name(value: str | None, field: str = "name") -> str | None:
    if value is None:
        return None
    if not NAME_RE.fullmatch(value):
        raise InvalidInput(f"{field} must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
                           field=field)
    return value


def check_cloud_id(value: str, field: str) -> str:
    """A Neutron/Nova object id (a UUID), in its canonical form: nothing else reaches the cloud's URLs."""
    try:
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        raise InvalidInput(f"{field} must be an OpenStack id (a UUID)", field=field) from None


SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()-]{0,254}$")


def check_server(value: str) -> str:
    """A server's id (canonical UUID) or its name (Nova names: printable, no control characters or slashes)."""
    try:
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        pass
    if not isinstance(value, str) or not SERVER_NAME_RE.fullmatch(value):
        raise InvalidInput("target_server must be a server id or a name of letters, digits, ' ', '.', '_', '(', ')' "
                           "or '-' (at most 255)", field="target_server")
    return value


def check_kind(value: str | None) -> str | None:
    if value is None:
        return None
    if not KIND_RE.fullmatch(value):
        raise InvalidInput("kind must be 1-32 letters, digits, '.', '_' or '-'", field="kind")
    return value


def check_owner(value: str) -> str:
    if not OWNER_RE.fullmatch(value):
        raise InvalidInput("owner must be 1-64 of a-z, 0-9, '_', '.', '@', '-', starting with a letter or '_'",
                           field="owner")
    return value


def check_description(value: str) -> str:
    if len(value) > 255 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidInput("description must be at most 255 printable characters", field="description")
    return value


def check_port(value: int, field: str, count: int = 1) -> int:
    if not (1 <= value <= 65535) or value + count - 1 > 65535:
        raise InvalidInput(f"{field} must be 1-65535 (and the whole block of {count} must fit)", field=field)
    return value


def check_port_count(value: int) -> int:
    if not (1 <= value <= MAX_PORT_COUNT):
        raise InvalidInput(f"port_count must be 1-{MAX_PORT_COUNT}", field="port_count")
    return value


def check_target(value: str, gateway: GatewayConfig,
                 own_addresses: Iterable[ipaddress.IPv4Address] = ()) -> ipaddress.IPv4Address:
    """The target must be a usable host address inside the gateway's target networks, and not the gateway."""
    addr, problem = _target(value, tuple(gateway.networks), gateway.name, tuple(gateway.target_networks))
    if problem is not None:
        raise InvalidInput(problem, field="target_address")
    assert addr is not None
    if addr in set(own_addresses):
        raise InvalidInput(f"target_address {addr} is an address of the gateway itself", field="target_address")
    return addr


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@functools.lru_cache(maxsize=16384)
def _target(value: str, networks: tuple[ipaddress.IPv4Network, ...], gateway: str,
            texts: tuple[str, ...]) -> tuple[ipaddress.IPv4Address | None, str | None]:
    """check_target's verdict on an address for a set of networks: (address, None) or (None, why). Cached: a
    batch names the same few hundred addresses thousands of times, and each check parses and compares."""
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None, f"target_address {value!r} is not an IP address"
    if addr.version != 4:
        return None, "IPv6 targets are not supported yet"
    assert isinstance(addr, ipaddress.IPv4Address)
    if addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified or addr.is_reserved \
            or addr == _BROADCAST:
        return None, f"target_address {addr} is a loopback, link-local, multicast or reserved address"
    nets = [n for n in networks if addr in n]
    if not nets:
        return None, (f"target_address {addr} is outside the target networks of gateway {gateway!r} "
                      f"({', '.join(texts)})")
    for net in nets:
        if net.prefixlen < 31 and addr in (net.network_address, net.broadcast_address):
            return None, f"target_address {addr} is the network or broadcast address of {net}"
    return addr, None


def check_sources(values: list[str] | None) -> list[str]:
    """CIDRs (or single addresses) clients may come from; normalized to network form, in the order given, with any
    network inside another one left out (10.0.0.0/9 adds nothing to 10.0.0.0/8, and the kernel's interval set
    refuses overlapping elements). Empty = anyone."""
    if not values:
        return []
    if len(values) > MAX_SOURCES:
        raise InvalidInput(f"at most {MAX_SOURCES} allowed_sources", field="allowed_sources")
    nets: list[ipaddress.IPv4Network] = []
    for v in values:
        try:
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise InvalidInput(f"allowed_sources entry {v!r} is not an address or CIDR",
                               field="allowed_sources") from None
        if net.version != 4:
            raise InvalidInput("IPv6 sources are not supported yet", field="allowed_sources")
        nets.append(net)  # type: ignore[arg-type]
    kept = [n for i, n in enumerate(nets)
            if not any(o != n and n.subnet_of(o) for o in nets) and n not in nets[:i]]
    return [str(n) for n in kept]


def check_protocol(value: str) -> str:
    if value not in ("tcp", "udp"):
        raise InvalidInput("protocol must be 'tcp' or 'udp'", field="protocol")
    return value
