"""Control plane: labgate's API and reconcile loop against the seeds' iptables commands, at several table sizes.

Method, per size N (e.g. 100, 10,000, 50,000, 120,000: the most one external address holds, see forward_port):
  1. A lab (client/gateway/lab namespaces) and a SQLite file in a temporary folder.  N forwards (and their port
     allocations) are bulk-inserted into the database with SQLAlchemy, as if created earlier.
  2. `python -m labgate serve --config <toml>` starts as a subprocess with the gateway in the lab's gateway namespace
     and the real nftables dataplane.  It restores the N forwards into the kernel before it serves: the bench times
     spawn -> /healthz "ok", reads the restore's own duration from the server log (event=full_sync), and checks that
     the log counts N forwards and that the first and the last forward's map elements are in the kernel (`nft get
     element`: a full listing takes seconds at 120,000, so the whole map is counted once, at the end of step 5).
  3. Sequential creates through the API (one keep-alive HTTP connection, stdlib client): latency from sending the
     request to reading the 201.  A few creates are each followed at once by a TCP connection from the client
     namespace through the new port to an echo service: 201 must mean "live".
  4. Sequential deletes of those forwards (204): the first half as they are; then 10,000 unrelated conntrack
     entries (TCP and UDP between made-up addresses, no mark, timeout 600 s) are inserted into the gateway
     namespace's conntrack table over netlink (labgate.dataplane.ctnetlink.create_entries, from a thread in the
     namespace; counted with `conntrack -C`), and the second half is deleted with them there (a delete cuts the
     forward's connections, so it must not walk them all).  Then creates per second with 8 concurrent clients and,
     at one size (50,000 in the full run), with 32: the single-replica ceiling, with py-spy attached to the server
     for that run (`py-spy record --format raw --idle --threads --nonblocking`, 100 Hz: it reads the server's
     memory without stopping it, but takes some CPU of the same 2 cores); its collapsed stacks are summarised by
     common.summarise_profile (where the samples go: HTTP, pydantic, SQLAlchemy, the database, nft/netlink,
     waiting).  If py-spy is missing or cannot attach, the run goes on and the report says so.
  5. The server's VmRSS and VmHWM (the peak over its whole life, the restore included), the map counted (a full
     listing) against the API's count, then it is stopped.
  6. In this process, against the same database and namespace, each repeat times
     (a) a full reconcile as the server does it (read the committed forwards, render, one nft batch),
     (b) GatewayDataplane.sync() (a full sync) with the rules already in memory (render + one batch), and
     (c) the baseline: `ip netns exec NS nft -f FILE` of exactly the batch that full sync just sent (recorded by
         wrapping labgate's nft runner: the forwarding table and the usage-counter table, as one batch).
     At least 3 repeats (or reconcile_repeats if fewer), more until reconcile_repeats or reconcile_budget_s (at
     120,000 a repeat takes a few seconds).  Then the drift check the reconcile loop runs every pass
     (GatewayDataplane.check_tables()), timed alone: median of 3 to 20 calls (until 5 s are spent).
Baseline for 3-4: the seeds' commands (seeds.py) in a lab namespace of the same kind holding N DNAT rules.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from labgate import lab as lablib

from bench.common import (Profiler, Sandbox, enter_netns, in_ns, percentile, run_in_ns, summarise_profile, summary,
                          timed_samples)
from bench.seeds import Iptables

GATEWAY = "bench"
TABLE = "labgate_bench"
FIRST_PORT = 1024
PORT_RANGE = "1024-65535"
# Prepopulated forward i (1-based) of n: TCP at FIRST_PORT + i - 1 while n <= TCP_ONLY; past that, TCP for odd i
# and UDP for even i at FIRST_PORT + (i - 1) // 2. One external address has 64,512 ports of each protocol here, so
# a gateway holds at most 129,024 forwards (issue 14 asked for 200,000 on one gateway: not possible on one
# address). The API's creates (TCP) take the TCP ports left above the prepopulated ones.
TCP_ONLY = 60_000
MAX_FORWARDS = 2 * (65535 - FIRST_PORT + 1)


def forward_port(i: int, n: int) -> tuple[str, int]:
    """(protocol, external port) of prepopulated forward i of n."""
    if n <= TCP_ONLY:
        return "tcp", FIRST_PORT + i - 1
    return ("tcp" if i % 2 else "udp"), FIRST_PORT + (i - 1) // 2
ECHO_PORT = 22


@dataclass
class ControlConfig:
    sizes: list[int]
    creates: int                 # sequential creates (and as many deletes) per size
    live_checks: int             # creates each followed by a connection through the new port
    concurrent_clients: int
    concurrent_creates: int      # per client
    budget_s: float              # time cap of one sampling loop
    reconcile_repeats: int
    baseline_creates: int        # seeds' creates/deletes per size (capped by budget_s)
    baseline_concurrent: int     # seeds' concurrent creates per worker
    backends: list[str]
    bulk: int = 0                # forwards created (and then deleted) in one batch request, at the smallest size,
    #                              and as many single creates, timed the same way, as its baseline
    reconcile_budget_s: float = 90.0  # repeats of step 6 stop past this (after at least 3)
    conntrack_entries: int = 10_000   # unrelated conntrack entries present for the second half of the deletes
    wide_clients: int = 32       # concurrent clients of the profiled run (0: no such run)
    wide_at: int = 50_000        # ... at this size (if measured)
    profile: bool = True         # py-spy attached to the server during that run


# --------------------------------------------------------------------------------------------------------------
# A lean API client: the stdlib's http.client on one keep-alive connection (httpx costs ~1 ms a request more)


class Api:
    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        payload = json.dumps(body) if body is not None else None
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=payload, headers=self.headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()  # the server closed an idle keep-alive connection: reconnect once
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def create(self, target: str, name: str) -> dict:
        status, data = self.call("POST", "/api/v1/forwards",
                                 {"target_address": target, "target_port": ECHO_PORT, "name": name, "kind": "centos"})
        if status != 201:
            raise RuntimeError(f"create answered {status}: {data}")
        return data  # type: ignore[return-value]

    def delete(self, forward_id: int) -> None:
        status, data = self.call("DELETE", f"/api/v1/forwards/{forward_id}")
        if status != 204:
            raise RuntimeError(f"delete answered {status}: {data}")

    def count(self) -> int:
        status, data = self.call("GET", "/api/v1/forwards?limit=1")
        if status != 200 or data is None:
            raise RuntimeError(f"list answered {status}: {data}")
        return int(data["count"])

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------------------------------------------
# The server under test


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kernel_elements(ns: str, table: str = TABLE) -> int:
    """How many elements the table's `ids` map holds right now (a full listing: ~2 s at 50,000, more at 120,000;
    call it only where a count is needed: has_elements checks a few)."""
    out = run_in_ns(ns, ["nft", "-j", "list", "map", "ip", table, "ids"]).stdout
    for item in json.loads(out)["nftables"]:
        if "map" in item:
            # Not the sentinel element (0.0.0.0 . tcp . 0: labgate's cheap drift check), which no forward is.
            return sum(1 for e in item["map"].get("elem", []) if '"0.0.0.0"' not in json.dumps(e))
    return 0


def has_elements(ns: str, external: str, keys_of: list[tuple[str, int]], table: str = TABLE) -> bool:
    """Are the `ids` map elements of these (protocol, external port) all in the kernel?  (`nft get element`: no
    listing.)"""
    keys = ", ".join(f"{external} . {protocol} . {p}" for protocol, p in keys_of)
    return run_in_ns(ns, ["nft", "get", "element", "ip", table, "ids", f"{{ {keys} }}"], check=False).returncode == 0


def conntrack_count(ns: str) -> int:
    """How many entries the namespace's conntrack table holds (`conntrack -C`)."""
    return int(run_in_ns(ns, ["conntrack", "-C"]).stdout.strip())


def unrelated_tuples(count: int) -> list[tuple[str, str, int, str, int]]:
    """count distinct (protocol, src, sport, dst, dport), TCP and UDP alternately, from the benchmarking network
    (198.18.0.0/15) to TEST-NET-3: no forward's traffic, no mark."""
    return [("tcp" if i % 2 else "udp", f"198.18.{(i >> 8) & 0xFF}.{i & 0xFF}", 20_000 + i % 40_000,
             f"203.0.113.{1 + i % 200}", 443 if i % 2 else 53) for i in range(count)]


def load_conntrack(ns: str, count: int, log) -> dict:
    """Insert `count` unrelated entries into ns's conntrack table over netlink (in process, from a thread in ns)."""
    from labgate.dataplane import ctnetlink

    before = conntrack_count(ns)
    entries = unrelated_tuples(count)
    t0 = time.perf_counter()
    accepted = in_ns(ns, lambda: ctnetlink.create_entries(entries, timeout=600))
    seconds = time.perf_counter() - t0
    after = conntrack_count(ns)
    if after - before < count:
        raise RuntimeError(f"conntrack holds {after} entries after inserting {count} (was {before}; the kernel "
                           f"accepted {accepted})")
    time.sleep(1.0)  # the server hears of count new entries (conntrack events): let it take them in first
    log(f"  {count} unrelated conntrack entries inserted in {seconds:.2f}s (conntrack -C: {before} -> {after})")
    return {"entries": count, "accepted": accepted, "insert_s": seconds, "count_before": before,
            "count_after": after}


def read_memory(pid: int) -> dict:
    """VmRSS and VmHWM of a process, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return {"rss_mib": values.get("VmRSS"), "hwm_mib": values.get("VmHWM")}


def prepopulate(db_url: str, n: int, target_of) -> str:
    """Create the schema, an admin token and n forwards to target_of(i) port 22 (ports: forward_port(i, n),
    with their port allocations), bulk-inserted as if created earlier; returns the token."""
    from sqlalchemy import insert

    from labgate.core.tokens import create_token
    from labgate.db.migrate import upgrade
    from labgate.db.models import Forward, PortAllocation, utcnow
    from labgate.db.session import Database

    if n > MAX_FORWARDS - 5_000:  # room for the API's creates
        raise ValueError(f"{n} forwards: one external address holds at most {MAX_FORWARDS - 5_000} here")
    db = Database(db_url)
    try:
        upgrade(db.engine)
        token = create_token(db, "bench", admin=True)
        now = utcnow()
        batch = 10_000
        with db.engine.begin() as conn:
            for lo in range(0, n, batch):
                ids = range(lo + 1, min(lo + batch, n) + 1)
                ports = {i: forward_port(i, n) for i in ids}
                conn.execute(insert(Forward.__table__), [
                    {"id": i, "gateway": GATEWAY, "protocol": ports[i][0], "external_port": ports[i][1],
                     "port_count": 1, "target_address": target_of(i), "target_port": ECHO_PORT,
                     "name": f"vm{i}", "kind": "centos", "owner": "bench", "description": "", "enabled": True,
                     "allowed_sources": [], "created_at": now, "updated_at": now} for i in ids])
                conn.execute(insert(PortAllocation.__table__), [
                    {"gateway": GATEWAY, "protocol": ports[i][0], "port": ports[i][1], "forward_id": i}
                    for i in ids])
    finally:
        db.dispose()
    return token


class LabgateServer:
    """One `labgate serve` subprocess on a prepopulated SQLite file, its gateway in `lab`'s gateway namespace."""

    def __init__(self, sandbox: Sandbox, lab: lablib.Lab, folder: Path) -> None:
        self.sandbox, self.lab, self.folder = sandbox, lab, folder
        folder.mkdir(parents=True, exist_ok=True)
        self.db_url = f"sqlite:///{folder}/labgate.db"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "server.log"
        self.config_path = folder / "labgate.toml"
        self.config_path.write_text(
            # rate_limit = 0: the bench's 8 clients share one token and measure the server, not the limiter.
            f'[server]\nlisten = "127.0.0.1:{self.port}"\ndatabase = "{self.db_url}"\nlog_level = "info"\n'
            f'rate_limit = 0\n\n'
            f'[[gateway]]\nname = "{GATEWAY}"\nnetns = "{lab.gateway_ns}"\n'
            f'external_address = "{lab.external_address}"\nport_range = "{PORT_RANGE}"\n'
            f'target_networks = ["{lab.lab_network}"]\nmasquerade = true\n')
        self.proc: subprocess.Popen | None = None
        self.token = ""

    def gateway_config(self):
        from labgate.config import GatewayConfig

        return GatewayConfig(name=GATEWAY, netns=self.lab.gateway_ns, external_address=self.lab.external_address,
                             port_range=[PORT_RANGE], target_networks=[self.lab.lab_network], masquerade=True)

    def prepopulate(self, n: int) -> float:
        """Create the schema, an admin token and n forwards (ports: forward_port(i, n)); returns the seconds it took."""
        started = time.perf_counter()
        machines = self.lab.machine_addresses
        self.token = prepopulate(self.db_url, n, lambda i: machines[i % 2])
        return time.perf_counter() - started

    def start(self, timeout: float = 300) -> float:
        """Spawn the server; return the seconds until /healthz says ok (the restore happens before it serves)."""
        log = open(self.log_path, "ab")
        started = time.perf_counter()
        self.proc = self.sandbox.spawn([sys.executable, "-m", "labgate", "serve", "--config", str(self.config_path)],
                                       stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"labgate exited ({self.proc.returncode}); see {self.log_path}:\n"
                                   + self.log_path.read_text()[-2000:])
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                if resp.status == 200 and json.loads(body).get("status") == "ok":
                    return time.perf_counter() - started
            except (OSError, http.client.HTTPException, ValueError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"labgate did not become ready within {timeout}s")

    def restored_forwards(self) -> int | None:
        """How many forwards the first full sync installed, as the server logged it."""
        found = re.search(rf"event=full_sync gateway={GATEWAY} forwards=(\d+)", self.log_path.read_text(errors="replace"))
        return int(found.group(1)) if found else None

    def restore_seconds(self) -> float | None:
        """The duration of the first full sync, as the server logged it."""
        found = re.search(rf"event=full_sync gateway={GATEWAY} forwards=\d+ seconds=([\d.]+)",
                          self.log_path.read_text(errors="replace"))
        return float(found.group(1)) if found else None

    def restore_phases(self) -> dict | None:
        """The first full sync's phases (reading the rows, rendering, nft), as the server logged them."""
        found = re.search(rf"event=full_sync gateway={GATEWAY} forwards=\d+ seconds=[\d.]+ load=([\d.]+) "
                          r"render=([\d.]+) apply=([\d.]+)", self.log_path.read_text(errors="replace"))
        return dict(zip(("load_s", "render_s", "apply_s"), map(float, found.groups()))) if found else None

    def memory(self) -> dict:
        assert self.proc is not None
        return read_memory(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            Sandbox.stop_process(self.proc, timeout=30)


# --------------------------------------------------------------------------------------------------------------
# Measurements


def _concurrent(workers: int, per_worker: int, budget_s: float, job, setup=None) -> dict:
    """Run job(worker, i) from `workers` threads, each up to per_worker times or until budget_s; creates/s."""
    done = [0] * workers
    errors: list[str] = []
    barrier = threading.Barrier(workers + 1)
    deadline_box: list[float] = []

    def worker(w: int) -> None:
        state = setup(w) if setup else None
        barrier.wait()
        try:
            for i in range(per_worker):
                if time.monotonic() > deadline_box[0]:
                    break
                job(state, w, i)
                done[w] += 1
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(str(exc)[:300])

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    deadline_box.append(time.monotonic() + budget_s)
    started = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    total = sum(done)
    return {"workers": workers, "completed": total, "seconds": elapsed, "per_second": total / elapsed if elapsed else None,
            "errors": len(errors), "first_error": errors[0] if errors else None}


def measure_labgate(sandbox: Sandbox, cfg: ControlConfig, size: int, log) -> dict:
    """Steps 1-6 above for one size; returns the raw numbers."""
    lab = sandbox.lab()
    echo = lablib.Service.start_tcp_echo(lab.lab_ns, lab.machine_addresses[0], ECHO_PORT)
    sandbox.on_close(echo.stop)
    server = LabgateServer(sandbox, lab, sandbox.workdir() / f"labgate-{size}")
    out: dict = {"forwards": size}
    out["prepopulate_seconds"] = server.prepopulate(size)
    log(f"  labgate N={size}: {size} rows inserted in {out['prepopulate_seconds']:.1f}s; starting the server")
    out["ready_seconds"] = server.start()
    out["restore_seconds"] = server.restore_seconds()
    out["restore_phases"] = server.restore_phases()
    out["restored_forwards"] = server.restored_forwards()
    if out["restored_forwards"] != size or not has_elements(lab.gateway_ns, lab.external_address,
                                                            [forward_port(1, size), forward_port(size, size)]):
        raise RuntimeError(f"the restore installed {out['restored_forwards']} forwards (expected {size}), or the "
                           "first or last is not in the kernel")
    out["memory_after_restore"] = server.memory()
    log(f"  labgate N={size}: ready in {out['ready_seconds']:.2f}s (restore {out['restore_seconds']}s), "
        f"RSS {out['memory_after_restore']['rss_mib']:.0f} MiB")

    target = lab.machine_addresses[0]
    api = Api(server.url, server.token)
    try:
        t0 = time.perf_counter()
        api.create(target, "first")          # loads the port bitmap: a one-off cost after a start
        out["first_create_ms"] = (time.perf_counter() - t0) * 1000
        for i in range(5):                   # warm-up, not counted
            api.create(target, f"warm{i}")

        created: list[int] = []
        samples = timed_samples(lambda i: created.append(api.create(target, f"seq{i}")["id"]),
                                n_max=cfg.creates, budget_s=cfg.budget_s)
        out["create_ms"] = summary([s * 1000 for s in samples])

        live = 0
        for i in range(cfg.live_checks):
            fwd = api.create(target, f"live{i}")
            reply = lablib.tcp_request(lab.client_ns, lab.external_address, fwd["external_port"], "ping", timeout=2)
            live += reply == f"{target}:ping"
        out["live_on_201"] = {"checked": cfg.live_checks, "answered": live}
        if live != cfg.live_checks:
            raise RuntimeError(f"only {live}/{cfg.live_checks} forwards carried traffic right after their 201")

        # The first half as they are; the second half with unrelated conntrack entries in the gateway's table.
        first, rest = (created[:len(created) // 2], created[len(created) // 2:]) if cfg.conntrack_entries \
            else (created, [])
        samples = timed_samples(lambda i: api.delete(first[i]), n_max=len(first), budget_s=cfg.budget_s * 2,
                                n_min=len(first))
        out["delete_ms"] = summary([s * 1000 for s in samples])
        if rest:
            out["conntrack_load"] = load_conntrack(lab.gateway_ns, cfg.conntrack_entries, log)
            samples = timed_samples(lambda i: api.delete(rest[i]), n_max=len(rest), budget_s=cfg.budget_s * 2,
                                    n_min=len(rest))
            out["delete_with_conntrack_ms"] = summary([s * 1000 for s in samples])
            out["conntrack_load"]["count_after_deletes"] = conntrack_count(lab.gateway_ns)

        if cfg.bulk and size == min(cfg.sizes):
            out["bulk"] = measure_bulk(api, lab, target, cfg.bulk, log)

        out["concurrent_creates"] = _concurrent(
            cfg.concurrent_clients, cfg.concurrent_creates, cfg.budget_s,
            setup=lambda w: Api(server.url, server.token),
            job=lambda client, w, i: client.create(target, f"c{w}-{i}"))
        if cfg.wide_clients and size == cfg.wide_at:
            out["wide_concurrent_creates"], out["profile"] = measure_wide(server, cfg, target, log)
        out["memory_at_end"] = server.memory()
        out["forwards_at_end"] = api.count()
        out["kernel_elements_at_end"] = kernel_elements(lab.gateway_ns)
        if out["kernel_elements_at_end"] != out["forwards_at_end"]:
            raise RuntimeError(f"kernel has {out['kernel_elements_at_end']} elements for "
                               f"{out['forwards_at_end']} forwards")
    finally:
        api.close()
        server.stop()
    c = out["create_ms"]
    loaded = out.get("delete_with_conntrack_ms")
    log(f"  labgate N={size}: create p50 {c['p50']:.2f} ms p99 {c['p99']:.2f} ms (n={c['n']}), delete p50 "
        f"{out['delete_ms']['p50']:.2f} ms"
        + (f" ({loaded['p50']:.2f} ms with {cfg.conntrack_entries} conntrack entries)" if loaded else "")
        + f", {out['concurrent_creates']['per_second']:.0f} creates/s with {cfg.concurrent_clients} clients, "
        f"RSS {out['memory_at_end']['rss_mib']:.0f} MiB, peak {out['memory_at_end']['hwm_mib']:.0f} MiB")

    out["reconcile"] = measure_reconcile(server, cfg.reconcile_repeats, log, budget_s=cfg.reconcile_budget_s)
    echo.stop()
    sandbox.drop_lab(lab)
    return out


def measure_wide(server: LabgateServer, cfg: ControlConfig, target: str, log) -> tuple[dict, dict]:
    """Creates/s with cfg.wide_clients concurrent clients, py-spy recording the server meanwhile."""
    assert server.proc is not None
    profiler = Profiler(server.proc.pid, server.folder / "profile.txt") if cfg.profile else None
    if profiler is not None:
        profiler.start()
    try:
        result = _concurrent(cfg.wide_clients, cfg.concurrent_creates, cfg.budget_s,
                             setup=lambda w: Api(server.url, server.token),
                             job=lambda client, w, i: client.create(target, f"w{w}-{i}"))
    finally:
        if profiler is not None:
            profiler.stop()
    if profiler is None:
        profile: dict = {"error": "not asked for (profile = False)"}
    elif profiler.error:
        profile = {"error": profiler.error}
    else:
        profile = summarise_profile(profiler.out.read_text(errors="replace"), seconds=profiler.seconds,
                                    rate=profiler.rate)
        profile["server_cpu_s"] = profiler.cpu_seconds
        profile["server_cpu_cores"] = (profiler.cpu_seconds / profiler.seconds
                                       if profiler.cpu_seconds is not None and profiler.seconds else None)
    result["profiled"] = profiler is not None and not profiler.error
    profile.update(clients=cfg.wide_clients, forwards=server_forwards(server), creates_per_s=result["per_second"])
    log(f"  {cfg.wide_clients} clients: {result['per_second']:.0f} creates/s"
        + (f" (py-spy: {profile['error']})" if "error" in profile else
           f", py-spy {profile['samples']} samples, server CPU {profile.get('server_cpu_cores') or 0:.2f} cores"))
    return result, profile


def server_forwards(server: LabgateServer) -> int | None:
    api = Api(server.url, server.token)
    try:
        return api.count()
    except Exception:  # noqa: BLE001 - only a label
        return None
    finally:
        api.close()


def measure_bulk(api: Api, lab: lablib.Lab, target: str, n: int, log) -> dict:
    """n forwards in one POST /api/v1/forwards/batch (answered once the kernel has them all), the same n by single
    creates, and the batch delete of the first n: wall time of each, a connection through a batch-made port."""
    before = kernel_elements(lab.gateway_ns)
    items = [{"target_address": target, "target_port": ECHO_PORT, "name": f"bulk{i}", "kind": "centos"}
             for i in range(n)]
    t0 = time.perf_counter()
    status, data = api.call("POST", "/api/v1/forwards/batch", {"create": items})
    batch_s = time.perf_counter() - t0
    if status != 201 or data is None or data["created"] != n:
        raise RuntimeError(f"the batch answered {status}: {str(data)[:300]}")
    if kernel_elements(lab.gateway_ns) != before + n:
        raise RuntimeError("the batch's forwards are not all in the kernel after its 201")
    last = data["forwards"][-1]
    reply = lablib.tcp_request(lab.client_ns, lab.external_address, last["external_port"], "ping", timeout=2)
    if reply != f"{target}:ping":
        raise RuntimeError(f"no traffic through a batch-made forward right after the 201 ({reply!r})")
    ids = [f["id"] for f in data["forwards"]]
    t0 = time.perf_counter()
    singles = [api.create(target, f"single{i}")["id"] for i in range(n)]
    singles_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    status, data = api.call("POST", "/api/v1/forwards/batch", {"delete": ids + singles})
    delete_s = time.perf_counter() - t0
    if status != 201 or data is None or len(data["deleted"]) != 2 * n:
        raise RuntimeError(f"the batch delete answered {status}: {str(data)[:300]}")
    if kernel_elements(lab.gateway_ns) != before:
        raise RuntimeError("the batch delete left elements in the kernel")
    log(f"  bulk: {n} forwards in one request {batch_s:.2f}s, {n} single creates {singles_s:.1f}s "
        f"({singles_s / batch_s:.0f}x), batch delete of {2 * n} {delete_s:.2f}s")
    return {"n": n, "batch_create_s": batch_s, "single_creates_s": singles_s, "batch_delete_s": delete_s,
            "deleted": 2 * n}


class RecordingRunner:
    """Wraps labgate's runner of whole-table batches and keeps the last batch it ran, so the baseline loads exactly
    that text."""

    last: str = ""

    def __init__(self) -> None:
        from labgate.dataplane.nft import NftProcess

        self._inner = NftProcess()  # what NamespaceKernel uses for whole tables

    def run(self, text: str, **kw) -> str:
        RecordingRunner.last = text
        return self._inner.run(text, **kw)

    def run_parts(self, parts, **kw) -> str:
        RecordingRunner.last = "".join(parts)
        return self._inner.run_parts(parts, **kw)

    def close(self) -> None:
        self._inner.close()


def measure_reconcile(server: LabgateServer, repeats: int, log, budget_s: float = 90.0) -> dict:
    """Step 6: the full reconcile, full_sync alone, and a bare `nft -f` of the same text, interleaved; then the
    drift check."""
    from labgate.config import ServerConfig, Settings
    from labgate.dataplane.kernel import NamespaceKernel
    from labgate.service import Labgate

    settings = Settings(server=ServerConfig(database=server.db_url, log_level="warning"),
                        gateway=[server.gateway_config()])
    # Not started: no loop, no API, no workers; its dataplane and database only. The recording runner lets the
    # baseline load the very batch the full sync sends.
    lg = Labgate(settings, kernels=lambda cfg: NamespaceKernel(cfg.netns, large_runner_factory=RecordingRunner))
    ns = server.lab.gateway_ns
    timings: dict[str, list[float]] = {"reconcile": [], "load_rules": [], "render": [], "apply": [], "full_sync": [],
                                       "nft_f": []}
    path = server.folder / "table.nft"
    try:
        gw = lg.dataplane.gateways[GATEWAY]
        gw.refresh_addresses()
        assert gw.external_address is not None
        rules = lg.forwards.rules.enabled_rows(GATEWAY)  # (id, protocol, external_port, ...) tuples
        started = time.monotonic()
        for i in range(repeats):
            if i >= min(3, repeats) and time.monotonic() - started > budget_s:
                break
            gw.needs_full = True
            t0 = time.perf_counter()
            if not lg.dataplane.reconcile_gateway(gw):
                raise RuntimeError(f"reconcile failed: {gw.last_error}")
            timings["reconcile"].append(time.perf_counter() - t0)
            # The reconcile's own phases (GatewayDataplane.last_full_phases): reading the rows, rendering, nft.
            phases = gw.last_full_phases
            timings["load_rules"].append(phases["load_s"])
            timings["render"].append(phases["render_s"])
            timings["apply"].append(phases["apply_s"])

            rows = lg.forwards.rules.enabled_rows(GATEWAY)
            t0 = time.perf_counter()
            with gw.lock:
                gw.sync(desired=lambda _ext: rows)  # no change given: a full sync of exactly these rows
            timings["full_sync"].append(time.perf_counter() - t0)

            path.write_text(RecordingRunner.last)
            t0 = time.perf_counter()
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(path)], check=True, capture_output=True)
            timings["nft_f"].append(time.perf_counter() - t0)

        def drift_check(_i: int) -> None:
            found = gw.check_tables()
            if found != (True, True):
                raise RuntimeError(f"the drift check found {found} right after a full sync")

        timings["drift_check"] = timed_samples(drift_check, n_max=20, budget_s=5.0, n_min=min(3, repeats))
        first, last = rules[0], rules[-1]
        if not has_elements(ns, server.lab.external_address, [(first[1], first[2]), (last[1], last[2])]):
            raise RuntimeError("after the reconciles, the first or last forward is not in the kernel")
    finally:
        lg.dataplane.stop()
        lg.db.dispose()
    result = {"forwards": len(rules), "repeats": len(timings["reconcile"]), "batch_bytes": path.stat().st_size,
              **{k: {"median_s": percentile(v, 50), "all_s": v} for k, v in timings.items()}}
    log(f"  reconcile N={len(rules)}: full reconcile {result['reconcile']['median_s']:.3f}s, full_sync "
        f"{result['full_sync']['median_s']:.3f}s, bare nft -f {result['nft_f']['median_s']:.3f}s, drift check "
        f"{result['drift_check']['median_s'] * 1000:.1f} ms")
    return result


def measure_seeds(sandbox: Sandbox, cfg: ControlConfig, backend: str, log) -> dict:
    """The seeds' create/delete (and 8 concurrent creators) on chains of each size, in one lab of the same kind."""
    ipt = Iptables(backend)
    lab = sandbox.lab()
    ns, ext, target = lab.gateway_ns, lab.external_address, lab.machine_addresses[0]
    results: dict = {"backend": backend, "label": ipt.label, "sizes": {}}

    def at_size(size: int) -> dict:
        # Runs in a thread inside the gateway namespace: every iptables child process is created there.
        # The seeds wrote TCP rules only: past 60,000 rules the loaded ports repeat (a linear chain costs by its
        # length); the created ones come from above them, so each is found again by its port.
        ipt.load(ext, [FIRST_PORT + j % 60_000 for j in range(size)], target)
        port = iter(range(FIRST_PORT + 60_000, 65536))
        created: list[int] = []

        def create_one(_i: int) -> None:
            created.append(next(port))
            ipt.create(ext, created[-1], target)

        samples = timed_samples(create_one, n_max=cfg.baseline_creates, budget_s=cfg.budget_s)
        out = {"forwards": size, "create_ms": summary([s * 1000 for s in samples])}
        samples = timed_samples(lambda i: ipt.delete(created[i]), n_max=len(created), budget_s=cfg.budget_s,
                                n_min=min(len(created), 5))
        out["delete_ms"] = summary([s * 1000 for s in samples])
        lock = threading.Lock()

        def next_port() -> int:
            with lock:
                return next(port)

        out["concurrent_creates"] = _concurrent(
            cfg.concurrent_clients, cfg.baseline_concurrent, cfg.budget_s,
            setup=lambda w: enter_netns(ns),
            job=lambda _state, w, i: ipt.create(ext, next_port(), target))
        return out

    for size in cfg.sizes:
        res = in_ns(ns, lambda: at_size(size))
        results["sizes"][str(size)] = res
        log(f"  {ipt.label} N={size}: create p50 {res['create_ms']['p50']:.1f} ms (n={res['create_ms']['n']}), "
            f"delete p50 {res['delete_ms']['p50']:.1f} ms, "
            f"{res['concurrent_creates']['per_second']:.1f} creates/s with {cfg.concurrent_clients} workers")
    in_ns(ns, ipt.clear)
    sandbox.drop_lab(lab)
    return results


def run(sandbox: Sandbox, cfg: ControlConfig, log) -> dict:
    out: dict = {"config": cfg.__dict__, "labgate": {}, "seeds": {}}
    for size in cfg.sizes:
        out["labgate"][str(size)] = measure_labgate(sandbox, cfg, size, log)
    for backend in cfg.backends:
        out["seeds"][backend] = measure_seeds(sandbox, cfg, backend, log)
    return out
