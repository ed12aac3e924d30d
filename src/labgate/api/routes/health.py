"""/healthz (no authentication: says only whether the service is up) and /metrics (authenticated)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from labgate.api.deps import LabgateDep, PrincipalDep
from labgate.db.queries import targets_down, used_forwards

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(lg: LabgateDep) -> dict:
    # Deliberately no detail: an unauthenticated probe learns nothing about forwards or addresses.
    healthy = all(gw.health().status in ("ok", "off") for gw in lg.dataplane.gateways.values())
    return {"status": "ok" if healthy else "degraded"}


class ForwardUsageCollector:
    """Per-forward usage and targets down, read from the database at scrape time (no state between scrapes)."""

    def __init__(self, lg) -> None:
        self.lg = lg

    def collect(self):
        labels = ["forward_id", "gateway", "owner", "name"]
        conns = CounterMetricFamily("labgate_forward_connections", "Connections through a forward", labels=labels)
        packets = CounterMetricFamily("labgate_forward_packets", "Packets through a forward", labels=labels)
        nbytes = CounterMetricFamily("labgate_forward_bytes", "Bytes through a forward", labels=labels)
        last = GaugeMetricFamily("labgate_forward_last_used_timestamp_seconds", "When a forward last carried traffic",
                                 labels=labels)
        down = GaugeMetricFamily("labgate_targets_down", "Target addresses currently down", labels=["gateway"])
        for r in used_forwards(self.lg.db):
            values = [str(r.forward_id), r.gateway, r.owner, r.name or ""]
            conns.add_metric(values, r.connections)
            packets.add_metric(values, r.packets)
            nbytes.add_metric(values, r.bytes)
            if r.last_used_at is not None:
                last.add_metric(values, r.last_used_at.timestamp())
        for gateway, n in targets_down(self.lg.db, (g.name for g in self.lg.settings.gateway)).items():
            down.add_metric([gateway], n)
        return [conns, packets, nbytes, last, down]


@router.get("/metrics")
def metrics(lg: LabgateDep, who: PrincipalDep) -> Response:
    per_forward = CollectorRegistry()
    per_forward.register(ForwardUsageCollector(lg))
    return Response(generate_latest() + generate_latest(per_forward), media_type=CONTENT_TYPE_LATEST)
