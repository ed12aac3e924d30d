"""The gateways view: each gateway (configured, or an OpenStack router) with its address, free ports, forwards and
dataplane status."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from labgate.config import Settings
from labgate.core.tokens import Principal
from labgate.core.views import GatewayView, ProblemView
from labgate.dataplane.reconcile import Dataplane
from labgate.db import cluster
from labgate.db.queries import forwards_per_gateway, ports_taken
from labgate.db.session import Database


def list_gateways(settings: Settings, db: Database, dataplane: Dataplane,
                  principal: Principal | None = None) -> list[GatewayView]:
    """Every gateway, by name; for a project-scoped token only its project's routers."""
    taken = ports_taken(db)
    counts = forwards_per_gateway(db)
    with db.reader() as s:
        syncs = cluster.gateway_syncs(s)
    remote = any(gw.kernel is None for gw in dataplane.gateways.values())
    agents = cluster.agents(db) if remote else []
    out = []
    for name, gwdp in sorted(dataplane.gateways.items()):
        cfg = gwdp.cfg
        if principal is not None and principal.project is not None and not principal.admin \
                and cfg.project_id != principal.project:
            continue
        health = gwdp.health()
        status, last_error, problems = health.status, health.last_error, \
            [ProblemView(p.check, p.message, p.fix) for p in health.problems]
        sync = syncs.get(name)
        agent = None
        if gwdp.kernel is None:  # another process (its agent) programs this gateway's kernel
            agent, status, last_error, problems = remote_status(name, sync, agents)
        size = sum(hi - lo + 1 for lo, hi in cfg.ranges)
        out.append(GatewayView(
            name=name,
            netns=cfg.netns,
            external_address=str(gwdp.external_address) if gwdp.external_address else None,
            port_ranges=cfg.port_range,
            target_networks=cfg.target_networks,
            masquerade=cfg.masquerade,
            ports_total=size,
            ports_free={p: size - taken.get((name, p), 0) for p in ("tcp", "udp")},
            forwards=counts.get(name, 0),
            status=status,
            last_error=last_error,
            last_sync_at=health.last_full_sync_at if gwdp.kernel is not None else
            (sync.applied_at.timestamp() if sync and sync.applied_at else None),
            forwards_in_kernel=health.forwards_in_kernel,
            problems=problems,
            agent=agent,
            generation=sync.generation if sync else 0,
            applied_generation=sync.applied_generation if sync else 0,
            dns_name=cfg.dns_name,
            router_id=cfg.router_id,
            router_name=cfg.router_name,
            project_id=cfg.project_id,
        ))
    return out


def remote_status(name: str, sync: cluster.GatewaySync | None, agents: list) -> tuple[
        dict[str, Any] | None, str, str | None, list[ProblemView]]:
    """A gateway whose kernel an agent programs: (its agent, status, last error, problems). Status: no_agent (none
    ever served it), agent_down (no heartbeat), error (the agent failed the newest generation), pending (behind),
    ok."""
    serving = [a for a in agents if name in (a.gateways or [])]
    if sync is not None and sync.agent:
        serving.sort(key=lambda a: a.name != sync.agent)  # the one that applied it first
    now = datetime.now(timezone.utc)
    live = [a for a in serving if a.stopped_at is None and cluster.alive_at(a, now)]
    chosen = (live or serving or [None])[0]
    fix_run = f"start `labgate agent --gateway {name}` on the host of this gateway's namespace"
    if chosen is None:
        return None, "no_agent", None, [ProblemView("agent", "no labgate agent serves this gateway: changes are "
                                                    "recorded but no kernel applies them", fix_run)]
    agent = {"name": chosen.name, "host": chosen.host, "alive": bool(live),
             "heartbeat_at": chosen.heartbeat_at.isoformat() if chosen.heartbeat_at else None,
             "version": chosen.version or None}
    if not live:
        how = "stopped" if chosen.stopped_at is not None else "sent no heartbeat"
        return agent, "agent_down", sync.last_error if sync else None, [ProblemView(
            "agent", f"its agent {chosen.name!r} on {chosen.host} {how} (last heartbeat {agent['heartbeat_at']}): "
                     "its kernel rules stay as they were, changes wait for it", fix_run)]
    if sync is not None and sync.failed(sync.generation):
        return agent, "error", sync.last_error, []
    if sync is not None and sync.pending(sync.generation):
        return agent, "pending", None, []
    return agent, "ok", None, []
