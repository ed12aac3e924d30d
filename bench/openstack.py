"""OpenStack: one cycle of labgate's monitor against the PRaaS method, on a real Neutron, at several forward counts.

Method.  A real Neutron 29 API (tests/openstack/neutron_api.py: its own venv .venv-neutron, built on first use,
SQLite, noauth; here without DHCP agent notifications, see neutron_server()) on a loopback port, one project
(port quota lifted) with a router (gateway on the external network) and a /20 subnet behind it, and "VM" ports
(device_owner compute:nova, a device_id each, consecutive addresses from .10) created in bulk (POST /v2.0/ports
with {"ports": [...]}, 200 a request; Neutron still takes ~0.1-0.2 s a port on 2 busy cores, the longest part
of this area: ~2 min for 1,000 ports).  Forwards are spread over the mapped
addresses: a size of N forwards uses min(N, max_addresses) ports (mapped addresses), N / addresses forwards each
(several target ports per address); the ports are added as the sizes grow, so the cloud at each size holds only
the ports that size maps.

labgate, in this process, without HTTP: the real assembly (labgate.service.Labgate, dataplane "none": the cycle
never touches a kernel when nothing changed), SQLite in the run's temporary folder, [openstack] pointing at the
Neutron's clouds.yaml, projects = that project.  One monitor.cycle() makes the router a gateway; then a first
batch of forwards is created through ForwardService.create by address on the router gateway (each bound to its
Neutron port from the last look, no API call) and timed; the rest are bulk-inserted as create would have written
them (bound to their port), which the next cycle confirms by changing nothing.  Then, with nothing changing in the
cloud (the steady state), monitor.cycle() is timed `repeats` times: median seconds and its report's api_calls.

Baseline, the PRaaS method (ORIGINS.md: its monitor listed all routers, then looked each mapped VM address up in
Neutron, per router), on the same Neutron in the same run, interleaved with labgate's cycles: GET /routers once,
then per mapped address of the router one GET /ports?fixed_ips=ip_address=X, through an openstacksdk network
adapter as labgate's own.  Reading the mappings back from the router namespace's iptables chains (as PRaaS did)
is not counted: only its API calls.  Above `praas_sample` addresses, a cycle times the listings of a sample
spread over the addresses and scales their sum linearly to all of them (the calls are alike and sequential); the
results say "extrapolated".  ORIGINS.md calls PRaaS's look-up "one full port listing per mapped IP": an unfiltered
GET /ports is timed too (raw data only), for a reading of that sentence where each look-up lists every port.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import Sandbox, percentile, summary

SUBNET = "10.60.0.0/20"           # 4,093 usable addresses
FIRST_HOST = 10                   # VM k gets SUBNET's address FIRST_HOST + k (.1 is the router's)
PORT_RANGE = "10000-30000"        # router_port_range: room for 20,001 forwards
FIRST_TARGET_PORT = 1000          # forward j of an address targets port FIRST_TARGET_PORT + j


@dataclass
class OpenStackBenchConfig:
    sizes: list[int]              # forwards
    repeats: int                  # steady-state cycles timed per size (labgate)
    praas_repeats: int            # PRaaS cycles timed per size
    praas_sample: int             # port listings timed per PRaaS cycle (all addresses when fewer)
    creates: int                  # forwards made by ForwardService.create per size (the rest bulk-inserted)
    max_addresses: int = 1000     # mapped addresses (VM ports) at most
    port_batch: int = 200         # ports per bulk POST
    unfiltered_listings: int = 2  # unfiltered GET /ports timed per size (raw data)


def _neutron_api():
    """tests/openstack/neutron_api.py (importable: bench/run.py puts the repository root on sys.path)."""
    from tests.openstack import neutron_api  # noqa: PLC0415

    return neutron_api


def neutron_server(root: Path, python: Path) -> Any:
    """The test suite's NeutronServer, with one option more: no DHCP agent notifications.  There is no DHCP agent,
    and Neutron tries (and fails) to schedule the network on one for every port created, ~40 ms a port; reads are
    unaffected."""
    base = _neutron_api().NeutronServer

    class BenchNeutron(base):  # type: ignore[misc, valid-type]
        def _write_config(self) -> None:
            super()._write_config()
            conf = self.root / "neutron.conf"
            conf.write_text(conf.read_text().replace("[DEFAULT]\n", "[DEFAULT]\ndhcp_agent_notification = false\n", 1))

    return BenchNeutron(root, python)


# --------------------------------------------------------------------------------------------------------------
# The cloud


@dataclass
class VmPort:
    id: str
    address: str
    device_id: str


def _check(resp: Any, what: str, *ok: int) -> dict:
    if resp.status_code not in ok:
        raise RuntimeError(f"Neutron {what} answered {resp.status_code}: {resp.text[:500]}")
    return resp.json()


def _address(k: int) -> str:
    """The k-th VM address (explicit addresses: ~15% faster to create than Neutron's own pick)."""
    return str(ipaddress.IPv4Network(SUBNET).network_address + FIRST_HOST + k)


def raise_port_quota(admin: Any, project_id: str) -> None:
    """No port quota for the project (Neutron's default is 500 ports)."""
    _check(admin.network.put(f"/quotas/{project_id}", json={"quota": {"port": -1}}, raise_exc=False),
           "PUT /quotas", 200)


def add_ports(admin: Any, topo: Any, have: list[VmPort], want: int, batch: int, log) -> float:
    """Create VM ports until `have` holds `want`, `batch` per bulk POST; returns the seconds it took."""
    t0 = time.perf_counter()
    while len(have) < want:
        n = min(batch, want - len(have))
        body = {"ports": [{"network_id": topo.network.id, "project_id": topo.project_id,
                           "name": f"bench-vm-{k}", "device_owner": "compute:nova", "device_id": str(uuid.uuid4()),
                           "fixed_ips": [{"subnet_id": topo.subnet.id, "ip_address": _address(k)}]}
                          for k in range(len(have), len(have) + n)]}
        made = _check(admin.network.post("/ports", json=body, raise_exc=False), "POST /ports (bulk)", 201)["ports"]
        for p in made:
            ips = [f["ip_address"] for f in p["fixed_ips"] if f["subnet_id"] == topo.subnet.id]
            have.append(VmPort(p["id"], ips[0], p["device_id"]))
        log(f"  {len(have)}/{want} VM ports ({time.perf_counter() - t0:.1f}s)")
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------------------
# labgate


def _spread(n: int, addresses: int) -> list[tuple[int, int]]:
    """Forward i -> (address index, target port): round robin over the addresses, distinct ports per address."""
    return [(i % addresses, FIRST_TARGET_PORT + i // addresses) for i in range(n)]


def _fake_kernel(cfg: Any) -> Any:
    from labgate.dataplane.fake import FakeKernel

    address = cfg.external_address if cfg.external_address != "auto" else "192.0.2.10"
    return FakeKernel(addresses=[address, "127.0.0.1"], preferred=address)


class LabgateSide:
    """labgate's assembly on a fresh SQLite file, following the one project; cycles timed in this process."""

    def __init__(self, folder: Path, server: Any, project_id: str) -> None:
        from labgate.config import OpenStackConfig, ServerConfig, Settings
        from labgate.db.migrate import upgrade
        from labgate.service import Labgate

        folder.mkdir(parents=True, exist_ok=True)
        settings = Settings(
            server=ServerConfig(database=f"sqlite:///{folder}/labgate.db", dataplane="none", rate_limit=0,
                                log_level="warning"),
            gateway=[],
            openstack=OpenStackConfig(cloud=server.cloud, clouds_file=str(server.clouds_yaml), projects=[project_id],
                                      monitor_interval=3600, router_port_range=PORT_RANGE))
        # Dataplane "none" with an in-memory kernel per router (as the API tests run): without a kernel this
        # process is no gateway's agent, and every create would wait agent_wait seconds for one.
        self.labgate = Labgate(settings, kernels=_fake_kernel)
        upgrade(self.labgate.db.engine)
        self.monitor = self.labgate.openstack

    def cycle(self, *, changes: dict | None = None):
        report = self.monitor.cycle()
        if report.error:
            raise RuntimeError(f"labgate's monitor cycle failed: {report.error}")
        if changes is not None and report.changes != changes:
            raise RuntimeError(f"labgate's monitor cycle changed {report.changes}, expected {changes}")
        return report

    def populate(self, gateway: str, ports: list[VmPort], n: int, creates: int) -> dict:
        """n forwards over `ports`: the first `creates` through ForwardService.create (timed), the rest inserted."""
        from sqlalchemy import func, insert, select

        from labgate.core.forwards import ForwardSpec
        from labgate.core.tokens import Principal
        from labgate.db.models import Forward, PortAllocation, utcnow

        spread = _spread(n, len(ports))
        root = Principal("bench", role="admin")
        times: list[float] = []
        unbound = 0
        for a, target_port in spread[:creates]:
            t0 = time.perf_counter()
            view = self.labgate.forwards.create(root, ForwardSpec(target_address=ports[a].address,
                                                                  target_port=target_port, gateway=gateway,
                                                                  name=f"vm{a}", kind="centos"))
            times.append(time.perf_counter() - t0)
            unbound += getattr(view, "target_port_id", None) != ports[a].id
        if unbound:
            raise RuntimeError(f"{unbound} created forwards were not bound to their Neutron port")
        rest = spread[creates:]
        insert_s = 0.0
        if rest:
            t0 = time.perf_counter()
            db = self.labgate.db
            with db.reader() as s:
                next_id = (s.scalar(select(func.max(Forward.id))) or 0) + 1
                used = set(s.scalars(select(PortAllocation.port).where(PortAllocation.gateway == gateway)))
            lo, hi = (int(x) for x in PORT_RANGE.split("-"))
            free = (p for p in range(lo, hi + 1) if p not in used)
            now = utcnow()
            rows, allocations = [], []
            for k, (a, target_port) in enumerate(rest):
                fid, ext = next_id + k, next(free)
                rows.append({"id": fid, "gateway": gateway, "protocol": "tcp", "external_port": ext, "port_count": 1,
                             "target_address": ports[a].address, "target_port": target_port, "name": f"vm{a}",
                             "kind": "centos", "owner": "bench", "description": "", "enabled": True,
                             "allowed_sources": [], "created_at": now, "updated_at": now,
                             "target_port_id": ports[a].id, "target_server_id": ports[a].device_id})
                allocations.append({"gateway": gateway, "protocol": "tcp", "port": ext, "forward_id": fid})
            with db.engine.begin() as conn:
                conn.execute(insert(Forward.__table__), rows)
                conn.execute(insert(PortAllocation.__table__), allocations)
            insert_s = time.perf_counter() - t0
        return {"created": len(times), "create_ms": summary([t * 1000 for t in times]),
                "create_total_s": sum(times), "inserted": len(rest), "insert_s": insert_s}

    def close(self) -> None:
        try:
            conn = self.monitor.cloud._conn
            if conn is not None:
                conn.close()
        finally:
            self.labgate.db.dispose()


# --------------------------------------------------------------------------------------------------------------
# The PRaaS method


def praas_cycle(conn: Any, router_id: str, addresses: list[str], sample: int) -> dict:
    """List the routers, then one filtered port listing per mapped address of our router (a spread sample of
    them when there are more than `sample`; their time scaled to all)."""
    t0 = time.perf_counter()
    routers = _check(conn.network.get("/routers", raise_exc=False), "GET /routers", 200)["routers"]
    routers_s = time.perf_counter() - t0
    if not any(r["id"] == router_id for r in routers):
        raise RuntimeError("the PRaaS method's router listing misses the bench's router")
    step = max(1, len(addresses) // sample) if sample < len(addresses) else 1
    chosen = addresses[::step][:sample]
    t1 = time.perf_counter()
    for ip in chosen:
        found = _check(conn.network.get("/ports", params={"fixed_ips": f"ip_address={ip}"}, raise_exc=False),
                       "GET /ports?fixed_ips=", 200)["ports"]
        if len(found) != 1:
            raise RuntimeError(f"a port listing by fixed IP {ip} found {len(found)} ports, expected 1")
    listings_s = time.perf_counter() - t1
    scale = len(addresses) / len(chosen) if chosen else 0.0
    return {"routers_s": routers_s, "listings_timed": len(chosen), "listings_s": listings_s,
            "cycle_s": routers_s + listings_s * scale, "calls": 1 + len(addresses),
            "extrapolated": len(chosen) < len(addresses)}


def unfiltered_listing(conn: Any, repeats: int) -> dict:
    """GET /ports with no filter (every port the admin sees): seconds per listing and ports listed."""
    times, count = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        count = len(_check(conn.network.get("/ports", raise_exc=False), "GET /ports", 200)["ports"])
        times.append(time.perf_counter() - t0)
    return {"listing_s": percentile(times, 50), "all_listing_s": times, "ports": count}


# --------------------------------------------------------------------------------------------------------------


def measure_size(sandbox: Sandbox, server: Any, admin: Any, topo: Any, ports: list[VmPort], size: int,
                 cfg: OpenStackBenchConfig, log) -> dict:
    from labgate.config import router_gateway_name

    gateway = router_gateway_name(topo.router.id)
    side = LabgateSide(sandbox.workdir() / f"openstack-{size}", server, topo.project_id)
    try:
        side.cycle(changes={"router_added": 1})
        t0 = time.perf_counter()
        made = side.populate(gateway, ports, size, min(cfg.creates, size))
        log(f"  {size} forwards over {len(ports)} addresses in {time.perf_counter() - t0:.1f}s: {made['created']} "
            f"created (p50 {made['create_ms'].get('p50', 0):.1f} ms), {made['inserted']} inserted")
        settle = side.cycle(changes={})
        cycles: list[float] = []
        calls: list[int] = []
        praas: list[dict] = []
        for r in range(max(cfg.repeats, cfg.praas_repeats)):
            if r < cfg.repeats:
                t1 = time.perf_counter()
                report = side.cycle(changes={})
                cycles.append(time.perf_counter() - t1)
                calls.append(report.api_calls)
            if r < cfg.praas_repeats:
                praas.append(praas_cycle(admin, topo.router.id, [p.address for p in ports], cfg.praas_sample))
        log(f"  labgate cycle: median {percentile(cycles, 50):.3f}s, {calls[-1]} API calls "
            f"({settle.routers} routers, {settle.ports} ports listed); PRaaS method: median "
            f"{percentile([p['cycle_s'] for p in praas], 50):.2f}s, {praas[0]['calls']} calls"
            + (f" (extrapolated from {praas[0]['listings_timed']} listings)" if praas[0]["extrapolated"] else ""))
        # The share of the cycle that is Neutron answering labgate's three listings (Cloud.snapshot() alone).
        listings: list[float] = []
        for _ in range(3):
            t1 = time.perf_counter()
            side.monitor.cloud.snapshot()
            listings.append(time.perf_counter() - t1)
        full = unfiltered_listing(admin, cfg.unfiltered_listings) if cfg.unfiltered_listings else None
        from labgate.openstack.cloud import PAGE

        snap = side.monitor.snapshot
        expected_calls = sum(n // PAGE + 1 for n in (len(snap.routers), len(snap.ports), len(snap.subnets)))
        return {
            "forwards": size, "addresses": len(ports), "forwards_per_address": size / len(ports),
            "populate": made,
            "labgate": {"cycle_s": percentile(cycles, 50), "all_cycle_s": cycles, "api_calls": max(calls),
                        "all_api_calls": calls, "expected_api_calls": expected_calls,
                        "listings_s": percentile(listings, 50),
                        "routers_listed": settle.routers, "ports_listed": settle.ports,
                        "forwards_followed": size},
            "praas": {"cycle_s": percentile([p["cycle_s"] for p in praas], 50),
                      "calls": praas[0]["calls"], "extrapolated": praas[0]["extrapolated"],
                      "listings_timed": praas[0]["listings_timed"],
                      "listing_ms": 1000 * sum(p["listings_s"] for p in praas)
                      / max(1, sum(p["listings_timed"] for p in praas)),
                      "routers_s": percentile([p["routers_s"] for p in praas], 50),
                      "all_cycle_s": [p["cycle_s"] for p in praas]},
            "unfiltered_port_listing": full,
        }
    finally:
        side.close()


def run(sandbox: Sandbox, cfg: OpenStackBenchConfig, log) -> dict:
    neutron_api = _neutron_api()
    t0 = time.perf_counter()
    python = neutron_api.ensure_venv(lambda m: log(f"  {m}"))
    venv_s = time.perf_counter() - t0
    root = sandbox.workdir() / "neutron"
    root.mkdir(parents=True, exist_ok=True)
    server = neutron_server(root, python)
    sandbox.on_close(server.stop)
    log("  starting the Neutron API (schema, then the server: ~25 s)")
    server.start()
    log(f"  Neutron API at {server.endpoint} (schema {server.timings['schema']:.1f}s, "
        f"server {server.timings['serve']:.1f}s)")
    out: dict = {"config": asdict(cfg), "neutron": {"version": _neutron_version(python), "venv_s": venv_s,
                                                   **{f"{k}_s": v for k, v in server.timings.items()}},
                 "subnet": SUBNET, "router_port_range": PORT_RANGE, "sizes": {}}
    try:
        admin = server.admin()
        t1 = time.perf_counter()
        topo = server.project_topology(cidr=SUBNET, name="bench")
        out["neutron"]["topology_s"] = time.perf_counter() - t1
        raise_port_quota(admin, topo.project_id)
        ports: list[VmPort] = []
        ports_s = 0.0
        for size in sorted(cfg.sizes):
            want = min(size, cfg.max_addresses)
            if want > len(ports):
                ports_s += add_ports(admin, topo, ports, want, cfg.port_batch, log)
            log(f"  {size} forwards, {want} mapped addresses")
            out["sizes"][str(size)] = measure_size(sandbox, server, admin, topo, ports[:want], size, cfg, log)
        out["neutron"]["ports_s"] = ports_s
        out["neutron"]["vm_ports"] = len(ports)
    finally:
        server.stop()
    return out


def _neutron_version(python: Path) -> str | None:
    import subprocess  # noqa: PLC0415

    try:
        r = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('neutron'))"],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None
