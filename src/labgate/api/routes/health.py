"""/healthz (no authentication: says only whether the service is up) and /metrics (authenticated)."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from labgate.api.deps import AUTH_ERRORS, AnyPrincipalDep, LabgateDep
from labgate.db import cluster
from labgate.db.queries import forwards_per_gateway, targets_down, used_forwards

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(request: Request) -> dict:
    # Answered on the event loop, never in the thread pool (where a crowd of slow requests would make a liveness
    # probe wait): so no sync dependency, no database, no lock held across I/O; only in-memory gateway state.
    # Deliberately no detail: an unauthenticated probe learns nothing about forwards or addresses.
    lg = request.app.state.labgate
    healthy = lg.db.problem is None and all(gw.health().status in ("ok", "off")
                                            for gw in lg.dataplane.gateways.values())
    return {"status": "ok" if healthy else "degraded"}


class ForwardUsageCollector:
    """Per-forward usage and targets down, read from the database at scrape time (no state between scrapes).

    `per_forward`: the series naming forwards (id, owner, name, bytes): only for roles that may see every user's
    forwards (admin, metrics). Without it only the per-gateway count of targets down is collected."""

    def __init__(self, lg, *, per_forward: bool = True) -> None:
        self.lg = lg
        self.per_forward = per_forward

    def collect(self):
        labels = ["forward_id", "gateway", "owner", "name"]
        down = GaugeMetricFamily("labgate_targets_down", "Target addresses currently down", labels=["gateway"])
        for gateway, n in targets_down(self.lg.db, list(self.lg.dataplane.gateways)).items():
            down.add_metric([gateway], n)
        common = [down, *self.cluster()]
        if not self.per_forward:
            return common
        conns = CounterMetricFamily("labgate_forward_connections", "Connections through a forward", labels=labels)
        packets = CounterMetricFamily("labgate_forward_packets", "Packets through a forward", labels=labels)
        nbytes = CounterMetricFamily("labgate_forward_bytes", "Bytes through a forward", labels=labels)
        last = GaugeMetricFamily("labgate_forward_last_used_timestamp_seconds", "When a forward last carried traffic",
                                 labels=labels)
        for r in used_forwards(self.lg.db):
            values = [str(r.forward_id), r.gateway, r.owner, r.name or ""]
            conns.add_metric(values, r.connections)
            packets.add_metric(values, r.packets)
            nbytes.add_metric(values, r.bytes)
            if r.last_used_at is not None:
                last.add_metric(values, r.last_used_at.timestamp())
        return [conns, packets, nbytes, last, *common]

    def cluster(self) -> list:
        """From the database, so any replica shows them (agents serve no HTTP): forwards per gateway, each
        gateway's committed and applied generations, each agent's heartbeat age and whether it is alive."""
        forwards = GaugeMetricFamily("labgate_forwards", "Forwards in the database", labels=["gateway"])
        for gateway, n in forwards_per_gateway(self.lg.db).items():
            forwards.add_metric([gateway], n)
        generation = GaugeMetricFamily("labgate_gateway_generation", "Changes committed to a gateway",
                                       labels=["gateway"])
        applied = GaugeMetricFamily("labgate_gateway_applied_generation", "Changes its kernel has (its agent)",
                                    labels=["gateway"])
        with self.lg.db.reader() as s:
            for name, sync in cluster.gateway_syncs(s).items():
                generation.add_metric([name], sync.generation)
                applied.add_metric([name], sync.applied_generation)
        up = GaugeMetricFamily("labgate_agent_up", "1 while an agent heartbeats (within three intervals)",
                               labels=["agent", "host"])
        age = GaugeMetricFamily("labgate_agent_heartbeat_age_seconds", "Seconds since an agent's last heartbeat",
                                labels=["agent", "host"])
        now = datetime.now(timezone.utc)
        for a in cluster.agents(self.lg.db):
            up.add_metric([a.name, a.host], int(a.stopped_at is None and cluster.alive_at(a, now)))
            age.add_metric([a.name, a.host], max((now - a.heartbeat_at).total_seconds(), 0.0))
        return [forwards, generation, applied, up, age]


@router.get("/metrics", responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                                   **AUTH_ERRORS})
def metrics(lg: LabgateDep, who: AnyPrincipalDep) -> Response:
    """Prometheus metrics. Admin and metrics tokens get everything; user and readonly tokens get the process-level
    metrics (sync, gateways, sinks, events, targets down per gateway) without the per-forward series, which name
    every user's forwards and owners."""
    who.require("metrics")
    per_forward = CollectorRegistry()
    per_forward.register(ForwardUsageCollector(lg, per_forward=who.may("metrics_detail")))
    return Response(generate_latest() + generate_latest(per_forward), media_type=CONTENT_TYPE_LATEST)
