"""`make bench`: measure labgate against the seeds' way and against the kernel's own limit, in one run (issue 3).

    python bench/run.py            # the full run (~15 min on 2 cores): 100 / 10,000 / 50,000 forwards
    python bench/run.py --quick    # a smoke run (a few minutes) with small tables; writes results/quick.{json,md}
    python bench/run.py --only openstack [--quick]   # one area; writes results/openstack_only[_quick].{json,md}

Needs root, nft, ip, conntrack, iptables (both backends), iperf3, socat and ping (`make bench` installs them).
Everything happens inside network namespaces this run creates (prefix "lgb" + 4 hex digits) and in a temporary
folder; all of it, and every process the run started, is removed at the end, also after an error or Ctrl-C.
The areas (one module each): control.py (API, restore, reconcile, memory), dataplane.py (new-connection latency,
throughput), background.py (the reachability cycle), openstack.py (the OpenStack monitor's cycle against the PRaaS
method, on a real Neutron API started from tests/openstack), seeds.py (the iptables baseline), report.py (figures,
ratios, goals -> latest.json / latest.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

# `python bench/run.py` from anywhere: the repository root on sys.path, and this folder off it (Python puts a
# script's folder first), or bench/openstack.py would shadow openstacksdk's `openstack` package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench import background, control, dataplane, openstack, report  # noqa: E402
from bench.common import Sandbox, git_info, machine_info, now_utc  # noqa: E402
from bench.seeds import BACKENDS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TOOLS = ("ip", "nft", "conntrack", "iptables-nft", "iptables-legacy", "iperf3", "socat", "ping")

PRESETS = {
    "full": dict(
        control=dict(sizes=[100, 10_000, 50_000, 120_000], creates=500, live_checks=20, concurrent_clients=8,
                     concurrent_creates=100, budget_s=20.0, reconcile_repeats=5, baseline_creates=200,
                     baseline_concurrent=4, bulk=10_000, reconcile_budget_s=60.0, conntrack_entries=10_000,
                     wide_clients=32, wide_at=50_000),
        dataplane=dict(sizes=[10, 10_000, 50_000, 120_000], rounds=10, connections=200, settle_s=1.0,
                       throughput_rounds=5, throughput_seconds=4),
        background=dict(addresses=50_000, repeats=3, seeds_sample=100),
        openstack=dict(sizes=[100, 10_000], repeats=5, praas_repeats=3, praas_sample=200, creates=500,
                       max_addresses=1000),
    ),
    "quick": dict(
        control=dict(sizes=[100, 2_000, 5_000], creates=100, live_checks=5, concurrent_clients=8,
                     concurrent_creates=20, budget_s=3.0, reconcile_repeats=2, baseline_creates=30,
                     baseline_concurrent=2, bulk=1_000, reconcile_budget_s=10.0, conntrack_entries=2_000,
                     wide_clients=32, wide_at=5_000),
        dataplane=dict(sizes=[10, 2_000, 5_000], rounds=2, connections=100, settle_s=0.3, throughput_rounds=1,
                       throughput_seconds=1),
        background=dict(addresses=2_000, repeats=1, seeds_sample=20),
        openstack=dict(sizes=[100, 1_000], repeats=3, praas_repeats=1, praas_sample=100, creates=100,
                       max_addresses=250),
    ),
}

NOTES = [
    "Baseline 'seeds' create' = `iptables -t nat -A PREROUTING -d EXT -p tcp --dport P -j DNAT --to-destination "
    "T:22` + `iptables -t nat -L PREROUTING -n --line-numbers` to find it again; delete = that listing + "
    "`iptables -t nat -D PREROUTING <line>`. Run directly in the gateway namespace (no sudo, no `ip netns exec`), "
    "without HTTP or a database: the most favourable setting for the baseline. The main baseline is Debian 12's "
    "default `iptables` (the nf_tables backend, iptables-nft); the legacy x_tables backend (what the seeds ran in "
    "2019-2021) is measured too.",
    "labgate creates go through the real API (`python -m labgate serve`, SQLite in WAL mode, real nftables in a "
    "lab gateway namespace), timed by a stdlib HTTP client on a keep-alive connection from request to 201. The "
    "client runs on the same 2 cores as the server.",
    "A labgate delete includes cutting the forward's connections: an in-process ctnetlink delete filtered by the "
    "forward's mark (the kernel walks its conntrack table; no child process). The second half of the deletes runs "
    "with 10,000 unrelated conntrack entries in the gateway's table (1/5 of that in --quick).",
    "Prepopulated forwards have no allowed_sources (the common case); each is one map element.",
    "The full-reconcile baseline loads, with `nft -f`, the very batch labgate's full_sync sent (recorded from its "
    "nft runner): the forwarding table and the usage-counter table together.",
    "The API server runs with everything `serve` starts (reconcile loop, usage counters, health checks, connection "
    "events), on the working tree of the commit named above.",
    "OpenStack: a real Neutron 29 API (tests/openstack/neutron_api.py, SQLite, noauth, on loopback; DHCP agent "
    "notifications off, there is no agent), one project router with a /20 subnet and bulk-created VM ports (one "
    "mapped address each, at most 1,000: larger sizes spread several forwards, with distinct target ports, over "
    "each address). labgate: its real assembly in the bench process (no HTTP, dataplane none with an in-memory "
    "kernel per router), forwards created by "
    "address on the router gateway (the first few hundred through ForwardService.create, the rest bulk-inserted "
    "already bound to their port, which a cycle then confirms), then the steady-state monitor.cycle() (nothing "
    "changed in the cloud) timed: median, and the API calls its report counts. Baseline, the PRaaS method on the "
    "same Neutron in the same run, interleaved: GET /routers, then one GET /ports?fixed_ips=ip_address=X per mapped "
    "address (admin, openstacksdk's network adapter like labgate); above the sample size its listings are timed on "
    "a spread sample and scaled linearly to all addresses (marked extrapolated). Reading the mappings back from "
    "iptables, as PRaaS also did, is not counted.",
]


def default_stem(only: str | None, quick: bool) -> str:
    """latest / quick for a whole run; a run of one area never replaces them."""
    if only:
        return f"{only}_only" + ("_quick" if quick else "")
    return "quick" if quick else "latest"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _interrupted(signum: int, _frame) -> None:
    # SIGTERM (e.g. a CI time-out) unwinds like Ctrl-C, so the `finally` in main() still removes everything.
    raise KeyboardInterrupt(f"signal {signum}")


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        sys.exit("bench/run.py builds network namespaces: run it as root (make bench)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing programs: {', '.join(missing)} (make bench installs them: "
                 "apt-get install nftables iproute2 conntrack iptables iperf3 socat iputils-ping)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small tables and few samples: a smoke run of a few minutes")
    parser.add_argument("--only", choices=("control", "dataplane", "background", "openstack"),
                        help="run one area only (results: AREA_only[_quick].{json,md}, never latest)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"iptables backends for the baselines, comma-separated (default: {','.join(BACKENDS)})")
    parser.add_argument("--sizes", help="comma-separated forward counts for the control and data plane parts, "
                                        "instead of the preset's (e.g. 100,50000)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default: {RESULTS})")
    parser.add_argument("--name", help="file stem of the results (default: latest, or quick with --quick)")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    if any(b not in BACKENDS for b in backends):
        parser.error(f"--backends takes {', '.join(BACKENDS)}")
    check_prerequisites()

    mode = "quick" if args.quick else "full"
    preset = PRESETS[mode]
    if args.sizes:
        try:
            sizes = sorted({int(x) for x in args.sizes.split(",") if x.strip()})
        except ValueError:
            parser.error(f"--sizes: not a list of numbers: {args.sizes!r}")
        if not sizes or min(sizes) < 1:
            parser.error("--sizes: give positive forward counts")
        preset = {**preset, "control": {**preset["control"], "sizes": sizes},
                  "dataplane": {**preset["dataplane"], "sizes": sizes}}
    signal.signal(signal.SIGTERM, _interrupted)

    results: dict = {"date": now_utc(), "mode": mode, "machine": machine_info(), "git": git_info(),
                     "notes": NOTES, "load_average_start": os.getloadavg()}
    sandbox = Sandbox()
    log(f"labgate bench, {mode} mode, namespaces {sandbox.prefix}*")
    busy = results["load_average_start"][0]
    if busy > 0.5 * (os.cpu_count() or 1):
        log(f"warning: the machine is busy (load average {busy:.1f}): figures will be noisy")
    started = time.monotonic()
    try:
        if args.only in (None, "control"):
            log("control plane")
            cfg = control.ControlConfig(**preset["control"], backends=backends)
            results["control"] = control.run(sandbox, cfg, log)
        if args.only in (None, "dataplane"):
            log("data plane")
            cfg_dp = dataplane.DataplaneConfig(**preset["dataplane"], backends=backends)
            results["dataplane"] = dataplane.run(sandbox, cfg_dp, log)
        if args.only in (None, "background"):
            log("background work")
            results["background"] = background.run(sandbox, background.BackgroundConfig(**preset["background"]), log)
        if args.only in (None, "openstack"):
            log("OpenStack monitor (a real Neutron API)")
            results["openstack"] = openstack.run(sandbox, openstack.OpenStackBenchConfig(**preset["openstack"]), log)
    finally:
        errors = sandbox.close()
        for e in errors:
            log(f"cleanup: {e}")
    results["duration_s"] = time.monotonic() - started
    results["load_average_end"] = os.getloadavg()
    stem = args.name or default_stem(args.only, args.quick) + ("_sizes" if args.sizes else "")
    json_path, md_path = report.write(results, args.out, stem)
    log(f"wrote {json_path} and {md_path} in {results['duration_s']:.0f}s")
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
