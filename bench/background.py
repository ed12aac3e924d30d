"""Background work: one reachability cycle of labgate's health monitor, against the seeds' pinger.

Method.  A lab whose gateway routes a /16 of extra lab addresses (10.100.0.0/16: clear of the labs' own 10.9.x.0/24
and 198.51.x.0/24, see labgate.lab) to the lab namespace: there, the first /17 is an AnyIP `local` route (the lab
namespace answers ICMP echo, and TCP with a reset, for every address in it) and the second /17 is a blackhole
(silence: dead machines, the slowest case for a prober; a TCP connect to them can only time out).  N forwards
(N = 50,000; at most 2 x 32,766) are bulk-inserted into a SQLite file, one per address, half answering and half
silent.  Being routed, the N addresses
need one neighbour (ARP) entry in all, not N (see labgate.workers.probe on the host-wide neighbour table).
In this process, HealthMonitor.check_once() - the whole cycle the service runs: read the forwards, ICMP to every
address and a TCP connect to every forward's target port from inside the gateway namespace, record the states -
is timed over a few repeats; the figure is the median.  The CPU the cycle costs is this process's user + system
CPU time (getrusage(RUSAGE_SELF): every thread, the probe threads included) over check_once(), reported in seconds
and as a share of the cycle's wall time (100% = one core busy for the whole cycle; this machine has 2).

Baseline: the seeds' pinger (vlab_ipam_api): 10 threads each running `ping -W 2 -c 3 ADDRESS`, one address at a
time.  Over N addresses it would take close to an hour, so it runs on a sample of the same addresses (half silent)
and its time is scaled to N (a fixed pool of threads: the time grows linearly); the table says "extrapolated".
Its CPU is the `ping` processes' (getrusage(RUSAGE_CHILDREN) over the sample; nothing else runs then), scaled alike.
"""

from __future__ import annotations

import ipaddress
import queue
import resource
import subprocess
import threading
import time
from dataclasses import dataclass

from labgate import lab as lablib

from bench.common import Sandbox, enter_netns, percentile
from bench.control import GATEWAY, PORT_RANGE, prepopulate

EXTRA_NETWORK = "10.100.0.0/16"
ANSWERING = ipaddress.IPv4Network("10.100.0.0/17")
SILENT = ipaddress.IPv4Network("10.100.128.0/17")


@dataclass
class BackgroundConfig:
    addresses: int           # N: forwards, one address each, half silent
    repeats: int             # health cycles timed
    seeds_sample: int        # addresses the seeds' pinger is timed on
    seeds_threads: int = 10


def _addresses(n: int) -> list[str]:
    """n addresses alternating answering / silent (n/2 of each; at most 32,766 of each)."""
    half = (n + 1) // 2
    if half > ANSWERING.num_addresses - 2:
        raise ValueError(f"at most {2 * (ANSWERING.num_addresses - 2)} addresses")
    answering = [str(ANSWERING.network_address + 1 + i) for i in range(half)]
    silent = [str(SILENT.network_address + 1 + i) for i in range(half)]
    return [a for pair in zip(answering, silent) for a in pair][:n]


def _build_lab(sandbox: Sandbox) -> lablib.Lab:
    lab = sandbox.lab()
    lablib._ip("-n", lab.gateway_ns, "route", "add", EXTRA_NETWORK, "via", lab.machine_addresses[0])
    lablib._ip("-n", lab.lab_ns, "route", "add", "local", str(ANSWERING), "dev", "lo")
    lablib._ip("-n", lab.lab_ns, "route", "add", "blackhole", str(SILENT))
    return lab


def measure_health_cycle(sandbox: Sandbox, lab: lablib.Lab, addresses: list[str], repeats: int, log) -> dict:
    from labgate.config import GatewayConfig, ServerConfig, Settings
    from labgate.db.session import Database
    from labgate.workers.health import HealthMonitor

    folder = sandbox.workdir() / "health"
    folder.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{folder}/labgate.db"
    prepopulate(db_url, len(addresses), lambda i: addresses[i - 1])
    settings = Settings(server=ServerConfig(database=db_url, log_level="warning"), gateway=[GatewayConfig(
        name=GATEWAY, netns=lab.gateway_ns, external_address=lab.external_address, port_range=[PORT_RANGE],
        target_networks=[lab.lab_network, EXTRA_NETWORK])])
    db = Database(db_url)
    cycles: list[float] = []
    cpus: list[float] = []
    try:
        monitor = HealthMonitor(settings, db)
        for r in range(repeats):
            u0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            probes = monitor.check_once()
            cycles.append(time.perf_counter() - t0)
            u1 = resource.getrusage(resource.RUSAGE_SELF)
            cpus.append(u1.ru_utime + u1.ru_stime - u0.ru_utime - u0.ru_stime)
            probe = probes[GATEWAY]
            alive = sum(1 for x in probe.icmp.values() if x.alive)
            inconclusive = sum(1 for x in probe.icmp.values() if x.inconclusive)
            log(f"  health cycle {r + 1}/{repeats} over {len(addresses)} addresses: {cycles[-1]:.2f}s, "
                f"CPU {cpus[-1]:.2f}s ({100 * cpus[-1] / cycles[-1]:.0f}%) (probes {probe.seconds:.2f}s; "
                f"{alive} answered, {inconclusive} inconclusive, {len(probe.tcp)} TCP targets)")
        expected = (len(addresses) + 1) // 2
        if alive != expected:
            raise RuntimeError(f"{alive} addresses answered, expected {expected}")
    finally:
        db.dispose()
    shares = [c / w for c, w in zip(cpus, cycles)]
    return {"addresses": len(addresses), "answering": expected, "cycle_s": percentile(cycles, 50),
            "all_cycle_s": cycles, "probe_s_last": probe.seconds, "tcp_targets": len(probe.tcp),
            "cpu_s": percentile(cpus, 50), "all_cpu_s": cpus, "cpu_share": percentile(shares, 50)}


def measure_seeds_pinger(lab: lablib.Lab, addresses: list[str], threads: int, total: int, log) -> dict:
    """The seeds' pinger on `addresses` (a sample); its time scaled to `total` addresses."""
    work: queue.Queue[str] = queue.Queue()
    for a in addresses:
        work.put(a)
    alive: list[str] = []

    def worker() -> None:
        enter_netns(lab.gateway_ns)
        while True:
            try:
                address = work.get_nowait()
            except queue.Empty:
                return
            if subprocess.run(["ping", "-W", "2", "-c", "3", address], capture_output=True).returncode == 0:
                alive.append(address)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
    scaled = seconds * total / len(addresses)
    cpu_scaled = cpu * total / len(addresses)
    log(f"  seeds' pinger ({threads} threads of ping -W 2 -c 3): {len(addresses)} addresses in {seconds:.1f}s "
        f"(CPU of the pings {cpu:.2f}s; {len(alive)} answered), {total} addresses extrapolated: {scaled:.0f}s, "
        f"CPU {cpu_scaled:.0f}s")
    return {"sample": len(addresses), "answered": len(alive), "sample_s": seconds, "threads": threads,
            "extrapolated_to": total, "extrapolated_s": scaled, "sample_cpu_s": cpu, "extrapolated_cpu_s": cpu_scaled}


def run(sandbox: Sandbox, cfg: BackgroundConfig, log) -> dict:
    lab = _build_lab(sandbox)
    addresses = _addresses(cfg.addresses)
    out = {"config": cfg.__dict__,
           "health_cycle": measure_health_cycle(sandbox, lab, addresses, cfg.repeats, log),
           "seeds_pinger": measure_seeds_pinger(lab, addresses[:cfg.seeds_sample], cfg.seeds_threads,
                                                cfg.addresses, log)}
    sandbox.drop_lab(lab)
    return out
