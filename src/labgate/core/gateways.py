"""The gateways view: each gateway (configured, or an OpenStack router) with its address, free ports, forwards and
dataplane status."""

from __future__ import annotations

from labgate.config import Settings
from labgate.core.tokens import Principal
from labgate.core.views import GatewayView, ProblemView
from labgate.dataplane.reconcile import Dataplane
from labgate.db.queries import forwards_per_gateway, ports_taken
from labgate.db.session import Database


def list_gateways(settings: Settings, db: Database, dataplane: Dataplane,
                  principal: Principal | None = None) -> list[GatewayView]:
    """Every gateway, by name; for a project-scoped token only its project's routers."""
    taken = ports_taken(db)
    counts = forwards_per_gateway(db)
    out = []
    for name, gwdp in sorted(dataplane.gateways.items()):
        cfg = gwdp.cfg
        if principal is not None and principal.project is not None and not principal.admin \
                and cfg.project_id != principal.project:
            continue
        health = gwdp.health()
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
            status=health.status,
            last_error=health.last_error,
            last_sync_at=health.last_full_sync_at,
            forwards_in_kernel=health.forwards_in_kernel,
            problems=[ProblemView(p.check, p.message, p.fix) for p in health.problems],
            dns_name=cfg.dns_name,
            router_id=cfg.router_id,
            router_name=cfg.router_name,
            project_id=cfg.project_id,
        ))
    return out
