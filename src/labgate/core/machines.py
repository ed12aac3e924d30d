"""The machines (IPAM) view: one entry per machine name and owner, derived from the forwards that name it."""

from __future__ import annotations

from sqlalchemy import select

from labgate.core.forwards import forward_views
from labgate.core.tokens import Principal
from labgate.core.views import MachineView
from labgate.dataplane.reconcile import Dataplane
from labgate.db.models import Forward
from labgate.db.session import Database


def list_machines(db: Database, dataplane: Dataplane, principal: Principal, *, name: str | None = None,
                  kind: str | None = None, owner: str | None = None, status: str | None = None) -> list[MachineView]:
    """Machines the caller may see (admins: everyone's, or `owner`'s). status: "up" (every address answers),
    "down" (one does not: a bad record), "unknown" (not probed yet)."""
    query = select(Forward).where(Forward.name.is_not(None)).order_by(Forward.name, Forward.id)
    if not principal.admin:
        query = query.where(Forward.owner == principal.owner)
    elif owner is not None:
        query = query.where(Forward.owner == owner)
    if name is not None:
        query = query.where(Forward.name == name)
    if kind is not None:
        query = query.where(Forward.kind == kind)
    machines: dict[tuple[str, str], MachineView] = {}
    with db.reader() as s:
        rows = list(s.scalars(query))
        for view in forward_views(s, dataplane, rows):
            assert view.name is not None
            entry = machines.setdefault((view.owner, view.name), MachineView(view.name, view.kind, view.owner))
            entry.kind = entry.kind or view.kind
            if view.target_address not in entry.addresses:
                entry.addresses.append(view.target_address)
            entry.address_health[view.target_address] = view.health.address
            entry.forwards.append(view)
    out = []
    for entry in machines.values():
        seen = set(entry.address_health.values())
        entry.status = "down" if "down" in seen else "up" if seen == {"up"} else "unknown"
        if status is None or entry.status == status:
            out.append(entry)
    return out
