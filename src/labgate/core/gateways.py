"""The gateways view: each configured gateway with its address, free ports, forwards and dataplane status."""

from __future__ import annotations

from labgate.config import Settings
from labgate.core.views import GatewayView, ProblemView
from labgate.dataplane.reconcile import Dataplane
from labgate.db.queries import forwards_per_gateway, ports_taken
from labgate.db.session import Database


def list_gateways(settings: Settings, db: Database, dataplane: Dataplane) -> list[GatewayView]:
    taken = ports_taken(db)
    counts = forwards_per_gateway(db)
    out = []
    for cfg in settings.gateway:
        gwdp = dataplane.get(cfg.name)
        assert gwdp is not None
        health = gwdp.health()
        size = sum(hi - lo + 1 for lo, hi in cfg.ranges)
        out.append(GatewayView(
            name=cfg.name,
            netns=cfg.netns,
            external_address=str(gwdp.external_address) if gwdp.external_address else None,
            port_ranges=cfg.port_range,
            target_networks=cfg.target_networks,
            masquerade=cfg.masquerade,
            ports_total=size,
            ports_free={p: size - taken.get((cfg.name, p), 0) for p in ("tcp", "udp")},
            forwards=counts.get(cfg.name, 0),
            status=health.status,
            last_error=health.last_error,
            last_sync_at=health.last_full_sync_at,
            forwards_in_kernel=health.forwards_in_kernel,
            problems=[ProblemView(p.check, p.message, p.fix) for p in health.problems],
            dns_name=cfg.dns_name,
        ))
    return out
