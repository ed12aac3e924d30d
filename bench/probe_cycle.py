"""One reachability cycle over 10,000 addresses, half of them dead, against the original's way (issue 5: < 10 s).

    sudo python bench/probe_cycle.py                     # 5,000 live + 5,000 dead, 3 cycles, both baselines
    sudo python bench/probe_cycle.py --baseline-sample 0 --no-fping      # labgate's probe only

Prints one JSON object on stdout (progress goes to stderr):
  seconds           median wall time of one labgate cycle (probe_in_namespace: ICMP, timeout 1 s, 2 attempts,
                    5,000 requests/s) over all addresses, from inside the gateway namespace
  baseline_seconds  the original's method - `ping -W 2 -c 3 ADDRESS` per address, 10 threads - timed on a sample
                    (half live, half dead) and EXTRAPOLATED linearly to all addresses (baseline_extrapolated: true)
  fping_seconds     fping 5 on all addresses with the same budget as labgate (-t 1000 -r 1 -B 1 -i 0.2), when
                    installed (apt-get install -y fping)

The lab: labgate.lab.create_lab, then `ip -batch` puts the live addresses on the lab namespace's interface as /32s
(~0.3 s for 5,000) and the gateway routes 10.10.0.0/16 to the lab namespace; the dead addresses are in the same
/16, not assigned, and the lab namespace (no forwarding) drops what is sent to them: silence, the slow case.
The live addresses are routed rather than on-link on purpose: 10,000 on-link addresses need 10,000 neighbour
entries within seconds, beyond the host-wide net.ipv4.neigh.default.gc_thresh3 (1024 by default), which makes the
kernel drop requests (see labgate/workers/probe.py).  Needs root and `ip`.  Everything it creates - namespaces,
processes - is removed at the end, also after an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # also without the editable install

from labgate.lab import Lab, create_lab, destroy_lab  # noqa: E402
from labgate.workers.probe import probe_in_namespace  # noqa: E402

LIVE_BASE = ipaddress.IPv4Address("10.10.0.1")
DEAD_BASE = ipaddress.IPv4Address("10.10.128.1")
ROUTED = "10.10.0.0/16"


def log(message: str) -> None:
    print(f"[probe_cycle] {message}", file=sys.stderr, flush=True)


def build(lab: Lab, live: int, dead: int) -> tuple[list[str], list[str], float]:
    if live > 32_000 or dead > 32_000:
        raise SystemExit("at most 32,000 live and 32,000 dead addresses (two halves of a /16)")
    live_addresses = [str(LIVE_BASE + i) for i in range(live)]
    dead_addresses = [str(DEAD_BASE + i) for i in range(dead)]
    started = time.monotonic()
    batch = "".join(f"address add {a}/32 dev {lab.lab_ifname}\n" for a in live_addresses)
    subprocess.run(["ip", "-n", lab.lab_ns, "-batch", "-"], input=batch, text=True, check=True, capture_output=True)
    subprocess.run(["ip", "-n", lab.gateway_ns, "route", "add", ROUTED, "via", lab.machine_addresses[0]],
                   check=True, capture_output=True)
    return live_addresses, dead_addresses, time.monotonic() - started


def labgate_cycle(lab: Lab, addresses: list[str], live: set[str], args) -> dict:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = probe_in_namespace(lab.gateway_ns, addresses, timeout=args.timeout, attempts=args.attempts,
                                rate=args.rate)
    after = resource.getrusage(resource.RUSAGE_SELF)
    alive = {a for a, r in report.icmp.items() if r.alive}
    rtts = sorted(r.rtt_ms for r in report.icmp.values() if r.rtt_ms is not None)
    return {
        "seconds": report.seconds,
        "cpu_seconds": round(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime, 3),
        "alive": len(alive),
        "misclassified": len(alive ^ live),
        "inconclusive": sum(r.inconclusive for r in report.icmp.values()),
        "rtt_ms_p50": rtts[len(rtts) // 2] if rtts else None,
        "rtt_ms_p99": rtts[int(len(rtts) * 0.99)] if rtts else None,
    }


def fping_cycle(lab: Lab, addresses: list[str], live: set[str], args) -> dict | None:
    binary = shutil.which("fping")
    if binary is None:
        log("fping not installed (apt-get install -y fping): skipped")
        return None
    options = ["-a", "-t", str(int(args.timeout * 1000)), "-r", str(args.attempts - 1), "-B", "1",
               "-i", f"{1000 / args.rate:g}"]
    started = time.monotonic()
    proc = subprocess.run(["ip", "netns", "exec", lab.gateway_ns, binary, *options, "-f", "-"],
                          input="\n".join(addresses) + "\n", capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    if proc.returncode not in (0, 1):       # 1: some hosts are unreachable
        raise RuntimeError(f"fping failed ({proc.returncode}): {proc.stderr.strip()[:300]}")
    alive = set(proc.stdout.split())
    return {"seconds": round(seconds, 3), "alive": len(alive), "misclassified": len(alive ^ live),
            "command": f"fping {' '.join(options)} -f FILE"}


def ping_baseline(lab: Lab, live_addresses: list[str], dead_addresses: list[str], total: int, sample: int) -> dict:
    """The original pinger: one `ping -W 2 -c 3` per address, 10 at a time; timed on `sample` addresses with the
    same live/dead mix, extrapolated to `total`."""
    share = len(live_addresses) / max(total, 1)
    n_live = min(len(live_addresses), round(sample * share))
    chosen = (random.Random(1).sample(live_addresses, n_live)
              + random.Random(2).sample(dead_addresses, min(len(dead_addresses), sample - n_live)))
    random.Random(3).shuffle(chosen)

    def ping(address: str) -> bool:
        proc = subprocess.run(["ip", "netns", "exec", lab.gateway_ns, "ping", "-n", "-q", "-W", "2", "-c", "3",
                               address], capture_output=True, timeout=60)
        return proc.returncode == 0

    started = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=10)
    try:
        up = dict(zip(chosen, pool.map(ping, chosen)))
    except BaseException:
        # Interrupted: drop the queued pings; the running ones die with the lab's namespaces (destroy_lab).
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    seconds = time.monotonic() - started
    live = set(live_addresses)
    return {"sample_addresses": len(chosen), "sample_seconds": round(seconds, 3),
            "sample_misclassified": sum(up[a] != (a in live) for a in chosen),
            "seconds": round(seconds * total / len(chosen), 1), "extrapolated": True,
            "method": "ping -W 2 -c 3 per address, 10 threads"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", type=int, default=5000)
    parser.add_argument("--dead", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3, help="labgate cycles to time (the median is reported)")
    parser.add_argument("--rate", type=int, default=5000, help="echo requests per second")
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--attempts", type=int, default=2)
    parser.add_argument("--baseline-sample", type=int, default=100,
                        help="addresses the ping baseline is timed on (0: skip it)")
    parser.add_argument("--no-fping", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("probe_cycle needs root (network namespaces, raw ICMP sockets)", file=sys.stderr)
        return 2

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)     # unwinds through the finally below

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    lab = None
    try:
        lab = create_lab("lgpb" + secrets.token_hex(3))
        log(f"lab {lab.prefix}: adding {args.live} live addresses")
        live_addresses, dead_addresses, setup = build(lab, args.live, args.dead)
        addresses = live_addresses + dead_addresses
        random.Random(0).shuffle(addresses)     # no help from the order
        live = set(live_addresses)

        runs = []
        for i in range(args.runs):
            runs.append(labgate_cycle(lab, addresses, live, args))
            log(f"labgate cycle {i + 1}/{args.runs}: {runs[-1]}")
        fping = None if args.no_fping else fping_cycle(lab, addresses, live, args)
        if fping:
            log(f"fping: {fping}")
        baseline = None
        if args.baseline_sample > 0:
            log(f"ping baseline on {args.baseline_sample} addresses (about {args.baseline_sample * 0.3:.0f} s)")
            baseline = ping_baseline(lab, live_addresses, dead_addresses, len(addresses), args.baseline_sample)
            log(f"ping baseline: {baseline}")

        seconds = statistics.median(r["seconds"] for r in runs) if runs else None
        result = {
            "addresses": len(addresses),
            "alive": runs[-1]["alive"] if runs else None,
            "dead": len(addresses) - runs[-1]["alive"] if runs else None,
            "seconds": seconds,
            "baseline_seconds": baseline["seconds"] if baseline else None,
            "baseline_extrapolated": bool(baseline),
            "speedup_vs_baseline": round(baseline["seconds"] / seconds, 1) if baseline and seconds else None,
            "fping_seconds": fping["seconds"] if fping else None,
            "expected": {"alive": len(live_addresses), "dead": len(dead_addresses)},
            "runs": runs,
            "baseline": baseline,
            "fping": fping,
            "settings": {"timeout": args.timeout, "attempts": args.attempts, "rate": args.rate},
            "lab": {"setup_seconds": round(setup, 3),
                    "topology": f"live /32s on the lab namespace, {ROUTED} routed to it from the gateway namespace"},
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        }
        print(json.dumps(result, indent=2))
        return 0 if runs and all(r["misclassified"] == 0 for r in runs) else 1
    finally:
        if lab is not None:
            destroy_lab(lab)
            log(f"lab {lab.prefix} removed")


if __name__ == "__main__":
    sys.exit(main())
