"""/api/v1/cluster: the processes of a labgate cluster (docs/operations.md, Cluster): the agents that program the
gateways' kernels, with their heartbeats, and the API process that runs the cluster-wide work."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter

from labgate.api.deps import AUTH_ERRORS, AdminDep, LabgateDep
from labgate.api.schemas import ClusterOut
from labgate.db import cluster

router = APIRouter(prefix="/api/v1/cluster", tags=["cluster"])


@router.get("", response_model=ClusterOut, responses=AUTH_ERRORS)
def cluster_status(lg: LabgateDep, who: AdminDep) -> dict:
    now = datetime.now(timezone.utc)
    agents = [{"name": a.name, "host": a.host, "pid": a.pid, "version": a.version or None,
               "gateways": list(a.gateways or []), "started_at": a.started_at, "heartbeat_at": a.heartbeat_at,
               "interval": a.interval, "stopped_at": a.stopped_at,
               "alive": a.stopped_at is None and cluster.alive_at(a, now)} for a in cluster.agents(lg.db)]
    return {"database": lg.db.engine.dialect.name,
            "leader": cluster.singleton_holder(lg.db) if cluster.is_postgres(lg.db) else "this process",
            "this_process_leads": lg.leader,
            "agents": agents}
