"""The baseline: the seeds' way of forwarding a port (vlab_ipam_api, PRaaS), one iptables DNAT rule per forward.

    create  iptables -t nat -A PREROUTING -d EXT -p tcp --dport P -j DNAT --to-destination T:22
            iptables -t nat -L PREROUTING -n --line-numbers          # find the rule again (by its line number)
    delete  iptables -t nat -L PREROUTING -n --line-numbers          # find its line number
            iptables -t nat -D PREROUTING <line>

Every command runs straight in the gateway namespace (no sudo, no `ip netns exec`): the most favourable setting
for the baseline.  `-w` waits for the xtables lock, so concurrent workers are serialized the way iptables does it.
A table of N rules is loaded at once with iptables-restore; the kernel then matches a new connection against the
chain rule by rule (a linear chain), which is what the data-plane baseline measures.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

BACKENDS = ("nft", "legacy")


@dataclass(frozen=True)
class Iptables:
    """One iptables backend: "nft" (iptables-nft, Debian 12's default `iptables`) or "legacy" (x_tables)."""

    backend: str

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"iptables backend must be one of {BACKENDS}")

    @property
    def binary(self) -> str:
        return f"iptables-{self.backend}"

    @property
    def label(self) -> str:
        return f"iptables-{self.backend}"

    # All methods below run programs in the *calling thread's* namespace: call them from a thread that entered the
    # gateway's namespace (common.in_ns / common.enter_netns).

    def _run(self, *args: str, input: str | None = None) -> str:
        proc = subprocess.run([self.binary, *args], input=input, capture_output=True, text=True, timeout=300)
        if proc.returncode:
            raise RuntimeError(f"{self.binary} {' '.join(args[:6])}... failed: {proc.stderr.strip()[:300]}")
        return proc.stdout

    def load(self, external: str, ports: range, target: str, target_port: int = 22) -> None:
        """Replace the nat table with one DNAT rule per port (in order: the last port is the last rule), plus one
        MASQUERADE rule for DNATed connections (labgate's gateways masquerade too)."""
        rules = "\n".join(
            f"-A PREROUTING -d {external}/32 -p tcp -m tcp --dport {p} -j DNAT --to-destination {target}:{target_port}"
            for p in ports)
        text = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                ":POSTROUTING ACCEPT [0:0]\n"
                f"{rules}\n"
                "-A POSTROUTING -m conntrack --ctstate DNAT -j MASQUERADE\n"
                "COMMIT\n")
        self._run_restore(text)

    def clear(self) -> None:
        self._run_restore("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                          ":POSTROUTING ACCEPT [0:0]\nCOMMIT\n")

    def _run_restore(self, text: str) -> None:
        proc = subprocess.run([f"{self.binary}-restore", "-w"], input=text, capture_output=True, text=True,
                              timeout=300)
        if proc.returncode:
            raise RuntimeError(f"{self.binary}-restore failed: {proc.stderr.strip()[:300]}")

    def line_of(self, port: int) -> int:
        """The line number of the DNAT rule for `port`, from a full listing (what the seeds did)."""
        listing = self._run("-w", "-t", "nat", "-L", "PREROUTING", "-n", "--line-numbers")
        found = re.search(rf"^(\d+) .*\bdpt:{port}\b", listing, re.MULTILINE)
        if not found:
            raise RuntimeError(f"the rule for port {port} is not in PREROUTING")
        return int(found.group(1))

    def create(self, external: str, port: int, target: str, target_port: int = 22) -> int:
        """Append the DNAT rule, then list the chain to find it again; returns its line number."""
        self._run("-w", "-t", "nat", "-A", "PREROUTING", "-d", external, "-p", "tcp", "--dport", str(port),
                  "-j", "DNAT", "--to-destination", f"{target}:{target_port}")
        return self.line_of(port)

    def delete(self, port: int) -> None:
        """Find the rule's line number in a listing, then delete that line."""
        self._run("-w", "-t", "nat", "-D", "PREROUTING", str(self.line_of(port)))
