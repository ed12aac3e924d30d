"""Data plane: what a packet pays going through a labgate gateway, against an iptables linear chain, plain routing
and a userspace proxy.

New-connection latency.  One lab per kind of gateway: labgate (its table loaded by labgate's own
GatewayDataplane.sync, a full sync) and each iptables backend (a nat table of one DNAT rule per forward, seeds.py).  Each
round visits every kind and every size (e.g. 10, 10,000, 50,000) in a shuffled order; a visit loads a table of that
size into the lab's gateway, flushes conntrack, lets the machine settle (freeing the previous table runs in the
background for a while), warms up with a few connections, then opens many TCP connections one after the other from
the client namespace, each: connect to the external address and port of the *last* forward (for iptables, the last
rule of the chain, the worst case of a linear chain), send one line, read the echo from the lab machine, close.
The time of each is one sample; the figure is the median over all rounds.  The same namespaces and processes serve
every size of a kind: comparing separate labs instead showed differences of ~6% between two identical labs, as
large as the effect looked for.  Only a connection's first packet goes through a nat chain: this is where the
table size can show.

Throughput.  iperf3, one TCP stream, client namespace -> gateway -> lab machine, through: a labgate forward (its
largest table installed), plain routing without any ruleset (the client has a route to the lab network: the
kernel's limit), a one-rule static nftables DNAT (the least any NAT gateway does: separates labgate's own cost from
the cost of conntrack + NAT), and socat in the gateway namespace (a userspace proxy doing the forward's job).
Runs are interleaved in shuffled rounds; the first second of each is omitted (TCP slow start); median.  Pinned: the
iperf3 client and server on CPU 0 ("one CPU": the whole path shares one core, so throughput is inversely
proportional to what each byte costs - the most sensitive and most repeatable setting) and, on a machine with two
or more, client on CPU 0 and server on CPU 1 ("two CPUs").  Unpinned runs swung by +-20% between runs here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import time
from dataclasses import dataclass

from labgate import lab as lablib

from bench.common import Sandbox, in_ns, percentile, run_in_ns, summary, wait_for_tcp
from bench.seeds import Iptables

FIRST_PORT = 1024
ECHO_EXT_PORT = 65000   # the last forward, to the echo service
IPERF_EXT_PORT = 64999  # the one before it, to iperf3
# One external address has 64,512 ports of each protocol above 1023: past that, forwards are UDP too (the other
# forwards are filler; which protocol they use changes nothing for a map lookup). At most this many forwards:
MAX_SIZE = 2 * (IPERF_EXT_PORT - FIRST_PORT) + 2


def filler_port(j: int) -> tuple[str, int]:
    """(protocol, external port) of filler forward j (0-based): TCP and UDP alternately from FIRST_PORT."""
    return ("tcp" if j % 2 == 0 else "udp"), FIRST_PORT + j // 2
ECHO_PORT = 22
IPERF_PORT = 5201
STATIC_DNAT_PORT = 15201
WARMUP_CONNECTIONS = 20


@dataclass
class DataplaneConfig:
    sizes: list[int]
    rounds: int                  # latency rounds over all kinds and sizes
    connections: int             # connections per visit
    settle_s: float              # pause after loading a table
    throughput_rounds: int
    throughput_seconds: int
    backends: list[str]
    seed: int = 0                # of the shuffled visiting order


class Gateway:
    """A lab whose gateway can be loaded with a table of N forwards of one kind; the echo service answers behind it.
    The last forward (TCP port ECHO_EXT_PORT) goes to the echo service, the one before it (IPERF_EXT_PORT) to
    iperf3's port; the others are filler (filler_port)."""

    def __init__(self, sandbox: Sandbox, kind: str) -> None:
        self.kind = kind
        self.lab = sandbox.lab()
        self.machine = self.lab.machine_addresses[0]
        echo = lablib.Service.start_tcp_echo(self.lab.lab_ns, self.machine, ECHO_PORT)
        sandbox.on_close(echo.stop)
        self.size = 0
        self._dataplane = None
        if kind == "labgate":
            from labgate.config import GatewayConfig
            from labgate.dataplane.kernel import NamespaceKernel
            from labgate.dataplane.reconcile import GatewayDataplane

            cfg = GatewayConfig(name="bench", netns=self.lab.gateway_ns, external_address=self.lab.external_address,
                                port_range=["1024-65535"], target_networks=[self.lab.lab_network], masquerade=True)
            self._dataplane = GatewayDataplane(cfg, NamespaceKernel(cfg.netns), source=None)  # type: ignore[arg-type]
            sandbox.on_close(self._dataplane.close)

    @property
    def client_ns(self) -> str:
        return self.lab.client_ns

    @property
    def address(self) -> str:
        return self.lab.external_address

    @property
    def echo_port(self) -> int:
        return ECHO_EXT_PORT

    @property
    def iperf_port(self) -> int:
        return IPERF_EXT_PORT

    def load(self, size: int) -> float:
        """Replace the gateway's table with one of `size` forwards; returns the seconds it took."""
        started = time.perf_counter()
        if not 2 <= size <= MAX_SIZE:
            raise ValueError(f"{size} forwards: one external address holds 2 to {MAX_SIZE} here")
        if self._dataplane is not None:
            from labgate.dataplane.render import ForwardRule

            ext, machine = ipaddress.IPv4Address(self.address), ipaddress.IPv4Address(self.machine)

            def rule(i: int) -> ForwardRule:
                if i == size:
                    protocol, port, tport = "tcp", ECHO_EXT_PORT, ECHO_PORT
                elif i == size - 1:
                    protocol, port, tport = "tcp", IPERF_EXT_PORT, IPERF_PORT
                else:
                    (protocol, port), tport = filler_port(i - 1), ECHO_PORT
                return ForwardRule(id=i, protocol=protocol, external_address=ext, external_port=port,
                                   target_address=machine, target_port=tport)

            rules = [rule(i) for i in range(1, size + 1)]
            self._dataplane.sync(desired=lambda _ext: rules)  # a full sync of exactly these rules
        else:
            ipt = Iptables(self.kind)
            # A linear chain: the echo forward's rule is the last one (the worst case). The seeds only wrote TCP
            # rules; past 64,512 rules the filler ports repeat (they never match the echo port).
            ports = [FIRST_PORT + j % 60_000 for j in range(size - 1)] + [ECHO_EXT_PORT]
            in_ns(self.lab.gateway_ns, lambda: ipt.load(self.address, ports, self.machine, ECHO_PORT))
        self.size = size
        return time.perf_counter() - started

    def flush_conntrack(self) -> None:
        run_in_ns(self.lab.gateway_ns, ["conntrack", "-F"], check=False)

    def check(self) -> None:
        reply = lablib.tcp_request(self.client_ns, self.address, self.echo_port, "hello", timeout=5)
        if reply != f"{self.machine}:hello":
            raise RuntimeError(f"{self.kind} with {self.size} forwards: no echo through the forward ({reply!r})")


def _connect_samples(address: str, port: int, count: int) -> list[float]:
    """Run inside the client namespace: `count` sequential connect + one echo round trip + close."""
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect((address, port))
            s.sendall(b"x\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk:
                    raise RuntimeError(f"connection to {address}:{port} closed before the echo")
                data += chunk
        samples.append(time.perf_counter() - t0)
    return samples


def measure_latency(gateways: list[Gateway], cfg: DataplaneConfig, log) -> dict:
    rng = random.Random(cfg.seed)
    samples: dict[tuple[str, int], list[float]] = {(g.kind, s): [] for g in gateways for s in cfg.sizes}
    load_s: dict[tuple[str, int], list[float]] = {k: [] for k in samples}
    for r in range(cfg.rounds):
        visits = [(g, s) for g in gateways for s in cfg.sizes]
        rng.shuffle(visits)
        for gw, size in visits:
            load_s[(gw.kind, size)].append(gw.load(size))
            gw.flush_conntrack()
            if r == 0:
                gw.check()
            time.sleep(cfg.settle_s)
            in_ns(gw.client_ns, lambda: _connect_samples(gw.address, gw.echo_port, WARMUP_CONNECTIONS))
            samples[(gw.kind, size)] += in_ns(
                gw.client_ns, lambda: _connect_samples(gw.address, gw.echo_port, cfg.connections))
        log(f"  latency round {r + 1}/{cfg.rounds} done")
    out = {}
    for (kind, size), values in samples.items():
        stats = summary([x * 1e6 for x in values])
        out[f"{kind}-{size}"] = {"kind": kind, "forwards": size, "connect_echo_us": stats,
                                 "table_load_s": percentile(load_s[(kind, size)], 50)}
        log(f"  new connection via {kind}, {size} forwards: median {stats['p50']:.0f} us, p99 {stats['p99']:.0f} us "
            f"(n={stats['n']})")
    return out


def _iperf(client_ns: str, address: str, port: int, seconds: int, affinity: str) -> float:
    proc = run_in_ns(client_ns, ["iperf3", "-c", address, "-p", str(port), "-t", str(seconds + 1), "-O", "1",
                                 "-A", affinity, "-J"], timeout=seconds + 60)
    return float(json.loads(proc.stdout)["end"]["sum_received"]["bits_per_second"])


def measure_throughput(sandbox: Sandbox, labgate_gw: Gateway, cfg: DataplaneConfig, log) -> dict:
    route_lab, static_lab, socat_lab = sandbox.lab(), sandbox.lab(), sandbox.lab()
    # Plain routing: the client reaches the lab network through the gateway; no NAT, no ruleset at all.
    lablib._ip("-n", route_lab.client_ns, "route", "add", route_lab.lab_network, "via", route_lab.external_address)
    # The least a NAT gateway does: one static DNAT rule and masquerading.
    run_in_ns(static_lab.gateway_ns, ["nft", "-f", "-"], input=(
        "table ip bench_static {\n"
        f"  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; "
        f"ip daddr {static_lab.external_address} tcp dport {STATIC_DNAT_PORT} "
        f"dnat to {static_lab.machine_addresses[0]}:{IPERF_PORT}; }}\n"
        "  chain postrouting { type nat hook postrouting priority srcnat; policy accept; ct status dnat masquerade; }\n"
        "}\n"))
    # socat: a userspace TCP proxy in the gateway namespace, one process per connection (fork).
    sandbox.spawn(["socat", f"TCP4-LISTEN:{IPERF_PORT},bind={socat_lab.external_address},reuseaddr,fork",
                   f"TCP4:{socat_lab.machine_addresses[0]}:{IPERF_PORT}"], ns=socat_lab.gateway_ns)
    wait_for_tcp(socat_lab.gateway_ns, socat_lab.external_address, IPERF_PORT)
    labgate_gw.load(max(cfg.sizes))
    ways = {
        "route": (route_lab, route_lab.machine_addresses[0], IPERF_PORT),
        "labgate": (labgate_gw.lab, labgate_gw.address, labgate_gw.iperf_port),
        "static_dnat": (static_lab, static_lab.external_address, STATIC_DNAT_PORT),
        "socat": (socat_lab, socat_lab.external_address, IPERF_PORT),
    }
    for lab, _, _ in ways.values():
        sandbox.spawn(["iperf3", "-s", "-B", lab.machine_addresses[0], "-p", str(IPERF_PORT)], ns=lab.lab_ns)
        wait_for_tcp(lab.lab_ns, lab.machine_addresses[0], IPERF_PORT)
    modes = {"one_cpu": "0,0"}
    if (os.cpu_count() or 1) >= 2:
        modes["two_cpus"] = "0,1"
    rng = random.Random(cfg.seed)
    runs: dict[str, dict[str, list[float]]] = {m: {k: [] for k in ways} for m in modes}
    for _ in range(cfg.throughput_rounds):
        visits = [(m, k) for m in modes for k in ways]
        rng.shuffle(visits)
        for mode, key in visits:
            lab, address, port = ways[key]
            runs[mode][key].append(_iperf(lab.client_ns, address, port, cfg.throughput_seconds, modes[mode]) / 1e9)
    out: dict = {"forwards_in_labgate_table": labgate_gw.size, "seconds": cfg.throughput_seconds,
                 "affinity": modes}
    for mode in modes:
        out[mode] = {key: {"gbit_s": percentile(vals, 50), "all_gbit_s": vals} for key, vals in runs[mode].items()}
        log(f"  throughput, {mode} (Gbit/s, median): "
            + ", ".join(f"{k} {v['gbit_s']:.2f}" for k, v in out[mode].items()))
    return out


def run(sandbox: Sandbox, cfg: DataplaneConfig, log) -> dict:
    gateways = [Gateway(sandbox, kind) for kind in ("labgate", *cfg.backends)]
    out = {"config": cfg.__dict__, "latency": measure_latency(gateways, cfg, log)}
    out["throughput"] = measure_throughput(sandbox, gateways[0], cfg, log)
    return out
