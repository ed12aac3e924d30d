"""The machines (IPAM) view: one entry per machine name and owner, derived from the forwards that name it.

A page is chosen in SQL (grouped by owner and name, with each machine's status computed there too), and only the
forwards of the machines on that page are loaded: an owner with 10,000 forwards does not make `limit=1` read them
all."""

from __future__ import annotations

from sqlalchemy import and_, case, func, select, tuple_

from labgate.core.forwards import forward_views
from labgate.core.tokens import Principal
from labgate.core.views import MachineView
from labgate.dataplane.reconcile import Dataplane
from labgate.db.models import AddressHealth, Forward
from labgate.db.queries import project_gateways
from labgate.db.session import Database


def list_machines(db: Database, dataplane: Dataplane, principal: Principal, *, name: str | None = None,
                  kind: str | None = None, owner: str | None = None, status: str | None = None,
                  limit: int = 50, offset: int = 0) -> tuple[int, list[MachineView]]:
    """(total, one page of) machines the caller may see (admins: everyone's, or `owner`'s). status: "up" (every
    address answers), "down" (one does not: a bad record), "unknown" (not probed yet)."""
    conds = [Forward.name.is_not(None)]
    scope = []  # what the caller may see at all: also limits the forwards loaded for a page's machines
    if principal.project is not None and not principal.admin:
        # A project-scoped token: the forwards on its project's routers (as /api/v1/forwards), not its owner's.
        scope.append(Forward.gateway.in_(project_gateways(db, principal.project)))
        conds += scope
        if owner is not None:
            conds.append(Forward.owner == owner)
    elif not principal.admin:
        conds.append(Forward.owner == principal.owner)
    elif owner is not None:
        conds.append(Forward.owner == owner)
    if name is not None:
        conds.append(Forward.name == name)
    if kind is not None:
        conds.append(Forward.kind == kind)
    state = func.coalesce(AddressHealth.state, "unknown")
    down = func.sum(case((state == "down", 1), else_=0))
    up = func.sum(case((state == "up", 1), else_=0))
    machine_status = case((down > 0, "down"), (up == func.count(), "up"), else_="unknown")
    keys = (select(Forward.owner, Forward.name, machine_status.label("status"))
            .outerjoin(AddressHealth, and_(AddressHealth.gateway == Forward.gateway,
                                           AddressHealth.address == Forward.target_address))
            .where(*conds).group_by(Forward.owner, Forward.name))
    if status is not None:
        keys = keys.having(machine_status == status)
    with db.reader() as s:
        total = s.scalar(select(func.count()).select_from(keys.subquery())) or 0
        page = s.execute(keys.order_by(Forward.name, Forward.owner).limit(limit).offset(offset)).all()
        if not page:
            return total, []
        rows = list(s.scalars(select(Forward).where(tuple_(Forward.owner, Forward.name).in_(
            [(r.owner, r.name) for r in page]), *scope).order_by(Forward.id)))
        machines = {(r.owner, r.name): MachineView(r.name, None, r.owner, status=r.status) for r in page}
        for view in forward_views(s, dataplane, rows):
            entry = machines[(view.owner, view.name)]  # type: ignore[index]
            entry.kind = entry.kind or view.kind
            if view.target_address not in entry.addresses:
                entry.addresses.append(view.target_address)
            entry.address_health[view.target_address] = view.health.address
            entry.forwards.append(view)
    return total, list(machines.values())
