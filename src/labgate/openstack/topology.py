"""What one look at the cloud says, as plain values: routers, ports, subnets, and what follows from them (which
router serves which subnet, which port holds which address). Pure: no I/O, so the monitor's decisions are tested
on values, and the same snapshot answers every question of a cycle without another API call.

Neutron's objects are read with `fields=` (only what is used below) and compared between cycles by id and
`revision_number` (Neutron rejects `changed_since` by default; see docs/openstack.md).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

# The device_owner values of a router's ports on its internal subnets (legacy, DVR, HA routers).
ROUTER_INTERFACE_OWNERS = frozenset({
    "network:router_interface",
    "network:router_interface_distributed",
    "network:ha_router_replicated_interface",
})
ROUTER_FIELDS = ("id", "name", "project_id", "external_gateway_info", "revision_number")
PORT_FIELDS = ("id", "name", "device_id", "device_owner", "network_id", "project_id", "fixed_ips",
               "revision_number")
SUBNET_FIELDS = ("id", "cidr", "network_id", "project_id", "ip_version")


class TopologyError(ValueError):
    """The cloud answered something this module cannot read (a missing or malformed field)."""


@dataclass(frozen=True)
class Router:
    id: str
    name: str
    project_id: str
    external_address: ipaddress.IPv4Address | None  # the first IPv4 of its external gateway; None = no gateway
    revision: int


@dataclass(frozen=True)
class Port:
    id: str
    name: str
    device_id: str
    device_owner: str
    network_id: str
    project_id: str
    fixed_ips: tuple[tuple[str, ipaddress.IPv4Address], ...]  # (subnet id, IPv4 address); IPv6 ones left out
    revision: int

    @property
    def attached(self) -> bool:
        """Whether a VM (or another device) holds the port: Nova clears device_id when it deletes a VM whose
        port the user had created."""
        return bool(self.device_id)


@dataclass(frozen=True)
class Subnet:
    id: str
    cidr: ipaddress.IPv4Network
    network_id: str
    project_id: str


@dataclass
class Snapshot:
    """One cycle's view of the cloud."""

    routers: dict[str, Router] = field(default_factory=dict)
    ports: dict[str, Port] = field(default_factory=dict)
    subnets: dict[str, Subnet] = field(default_factory=dict)

    @classmethod
    def parse(cls, routers: Iterable[Mapping[str, Any]], ports: Iterable[Mapping[str, Any]],
              subnets: Iterable[Mapping[str, Any]]) -> "Snapshot":
        snap = cls()
        for r in routers:
            router = parse_router(r)
            snap.routers[router.id] = router
        for p in ports:
            port = parse_port(p)
            snap.ports[port.id] = port
        for s in subnets:
            subnet = parse_subnet(s)
            if subnet is not None:
                snap.subnets[subnet.id] = subnet
        return snap

    # --- what follows -------------------------------------------------------------------------------------------
    def router_subnets(self) -> dict[str, list[Subnet]]:
        """router id -> the IPv4 subnets it has an interface on (sorted by CIDR)."""
        out: dict[str, list[Subnet]] = {}
        for port in self.ports.values():
            if port.device_owner in ROUTER_INTERFACE_OWNERS and port.device_id in self.routers:
                for subnet_id, _ip in port.fixed_ips:
                    subnet = self.subnets.get(subnet_id)
                    if subnet is not None:
                        out.setdefault(port.device_id, []).append(subnet)
        for subnets in out.values():
            subnets.sort(key=lambda s: (s.cidr, s.id))
        return out

    def router_of_subnet(self) -> dict[str, str]:
        """subnet id -> the router with an interface on it (a subnet has at most one router interface that is
        its gateway; the first one found wins when a cloud has more)."""
        out: dict[str, str] = {}
        for router_id, subnets in sorted(self.router_subnets().items()):
            for subnet in subnets:
                out.setdefault(subnet.id, router_id)
        return out

    def vm_ports(self) -> Iterable[Port]:
        """Ports that may be targets: neither a router's nor a DHCP server's nor a floating IP's."""
        for port in self.ports.values():
            if not port.device_owner.startswith("network:"):
                yield port

    def port_behind(self, port: Port, router_id: str, subnet_routers: Mapping[str, str]) -> ipaddress.IPv4Address | None:
        """The address of `port` on a subnet `router_id` serves, or None."""
        for subnet_id, ip in port.fixed_ips:
            if subnet_routers.get(subnet_id) == router_id:
                return ip
        return None


def _req(obj: Mapping[str, Any], key: str, kind: str) -> Any:
    try:
        value = obj[key]
    except (KeyError, TypeError):
        raise TopologyError(f"a {kind} without {key!r} in the cloud's answer") from None
    return value


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _ipv4_fixed_ips(entries: Any) -> list[tuple[str, ipaddress.IPv4Address]]:
    """(subnet id, address) of the IPv4 entries of a fixed_ips-like list; unreadable ones left out."""
    out = []
    for fip in entries or []:
        try:
            addr = ipaddress.ip_address(fip.get("ip_address", ""))
        except ValueError:
            continue
        if addr.version == 4:
            out.append((_text(fip.get("subnet_id")), addr))
    return out


def parse_router(r: Mapping[str, Any]) -> Router:
    external = _ipv4_fixed_ips((r.get("external_gateway_info") or {}).get("external_fixed_ips"))
    return Router(id=str(_req(r, "id", "router")), name=_text(r.get("name")), project_id=_text(r.get("project_id")),
                  external_address=external[0][1] if external else None,
                  revision=int(r.get("revision_number") or 0))


def parse_port(p: Mapping[str, Any]) -> Port:
    return Port(id=str(_req(p, "id", "port")), name=_text(p.get("name")), device_id=_text(p.get("device_id")),
                device_owner=_text(p.get("device_owner")), network_id=_text(p.get("network_id")),
                project_id=_text(p.get("project_id")), fixed_ips=tuple(_ipv4_fixed_ips(p.get("fixed_ips"))),
                revision=int(p.get("revision_number") or 0))


def parse_subnet(s: Mapping[str, Any]) -> Subnet | None:
    try:
        cidr = ipaddress.ip_network(_req(s, "cidr", "subnet"), strict=False)
    except ValueError:
        return None
    if cidr.version != 4:
        return None
    return Subnet(id=str(_req(s, "id", "subnet")), cidr=cidr, network_id=_text(s.get("network_id")),
                  project_id=_text(s.get("project_id")))
