"/api/v1/events: recent events (connections, forward changes, health changes), newest last; yours unless admin."

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from labgate.api.deps import AUTH_ERRORS, LabgateDep, ReaderDep
from labgate.api.schemas import EventList
from labgate.db.queries import project_gateways

router = APIRouter(prefix="/api/v1/events", tags=["events"])
RECENT_MAX = 10_000  # the events the bus keeps: a project token's are picked from all of them


@router.get("", response_model=EventList, responses=AUTH_ERRORS)
def list_events(
    lg: LabgateDep,
    who: ReaderDep,
    kind: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z][a-z0-9_-]*$")] = None,
    gateway: Annotated[str | None, Query(max_length=32)] = None,
    forward_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    owner: Annotated[str | None, Query(max_length=64, description="admins only")] = None,
    since_seq: Annotated[int | None, Query(ge=0, le=2**62, description="only events after this seq")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict:
    """Events kept in memory (the most recent 10,000). Poll with since_seq = the last seq you saw."""
    if who.project is not None and not who.admin:
        # A project-scoped token: the events of its project's routers (as /api/v1/forwards), not its owner's.
        mine = set(project_gateways(lg.db, who.project))
        if gateway is not None and gateway not in mine:
            mine = set()
        found = lg.bus.recent(kind=kind, gateway=gateway, owner=owner, forward_id=forward_id, since_seq=since_seq,
                              limit=RECENT_MAX)
        found = [e for e in found if e.fields.get("gateway") in mine]
        events = found[:limit] if since_seq is not None else found[-limit:]
    else:
        if not who.admin:
            owner = who.owner  # someone else's connections are not yours to see
        events = lg.bus.recent(kind=kind, gateway=gateway, owner=owner, forward_id=forward_id, since_seq=since_seq,
                               limit=limit)
    results = [{"seq": e.seq, "time": e.time, "kind": e.kind, "fields": dict(e.fields)} for e in events]
    return {"count": len(results), "results": results}
