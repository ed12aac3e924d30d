"""Namespaces that play a Neutron network node for the kernel tests: a router namespace named as the L3 agent names
it (`qrouter-<the real router id>`), a VM namespace holding the real port's fixed IP, and a client on the external
network. Built from the real Neutron objects; every namespace is marked as the lab's (labgate.lab.MARKER) and
removed by `close()`, even after a failure. Nothing is created in the host's namespace.

    client ns  cl0 198.51.100.2/24  <-veth->  qg0 <router's external IP>/24   qrouter-<id>
                                              qr0 <subnet gateway>/<len>  <-veth->  vm0 <port IP>   VM ns
                                                                                    default via <subnet gateway>
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
from dataclasses import dataclass, field

from labgate.lab import MARKER, remove_namespace

CLIENT_ADDRESS = "198.51.100.2"


def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class NetLab:
    client_ns: str = field(default_factory=lambda: "lgoc-" + secrets.token_hex(4))
    namespaces: list[str] = field(default_factory=list)
    _client_addressed: bool = False

    def _ns(self, name: str) -> str:
        ip("netns", "add", name)  # fails when the name is taken: never adopt a namespace
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "dev", "lo", "alias", f"{MARKER} openstack-test")
        ip("-n", name, "link", "set", "dev", "lo", "up")
        return name

    def start(self) -> "NetLab":
        self._ns(self.client_ns)
        return self

    def router(self, router, subnet) -> str:
        """The router's namespace, wired to the client (external side) and to nothing inside yet."""
        ns = self._ns(f"qrouter-{router.id}")
        ext = router.external_gateway_info["external_fixed_ips"][0]["ip_address"]
        cl_if, qg_if = "cl" + secrets.token_hex(3), "qg0"
        ip("-n", self.client_ns, "link", "add", cl_if, "type", "veth", "peer", "name", qg_if, "netns", ns)
        if not self._client_addressed:  # one client address; a host route to each router's address
            ip("-n", self.client_ns, "addr", "add", f"{CLIENT_ADDRESS}/32", "dev", cl_if)
            self._client_addressed = True
        ip("-n", self.client_ns, "link", "set", cl_if, "up")
        ip("-n", self.client_ns, "route", "add", f"{ext}/32", "dev", cl_if, "src", CLIENT_ADDRESS)
        ip("-n", ns, "addr", "add", f"{ext}/24", "dev", qg_if)
        ip("-n", ns, "link", "set", qg_if, "up")
        return ns

    def vm(self, router_ns: str, subnet, address: str) -> str:
        """A VM namespace behind the router, holding `address`; the router side gets the subnet's gateway."""
        ns = self._ns("lgvm-" + secrets.token_hex(4))
        net = ipaddress.ip_network(subnet.cidr)
        qr_if = "qr" + secrets.token_hex(3)
        ip("-n", router_ns, "link", "add", qr_if, "type", "veth", "peer", "name", "vm0", "netns", ns)
        ip("-n", router_ns, "addr", "add", f"{subnet.gateway_ip}/{net.prefixlen}", "dev", qr_if)
        ip("-n", router_ns, "link", "set", qr_if, "up")
        ip("-n", ns, "addr", "add", f"{address}/{net.prefixlen}", "dev", "vm0")
        ip("-n", ns, "link", "set", "vm0", "up")
        ip("-n", ns, "route", "add", "default", "via", subnet.gateway_ip)
        return ns

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            try:
                remove_namespace(ns)
            except Exception:  # noqa: BLE001 - remove the others anyway
                pass
        self.namespaces.clear()
