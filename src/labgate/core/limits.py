"""Per-owner quotas: how many forwards and external ports one owner may hold, so that one user cannot take a
gateway's every port. Defaults come from [limits]; an admin overrides them per owner. Admins are not limited."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from labgate.config import LimitsConfig
from labgate.core import audit
from labgate.core.errors import InvalidInput, LabgateError, NotFound
from labgate.core.tokens import Principal
from labgate.core.validation import check_owner
from labgate.db.limits import OwnerLimit, owner_limit, owner_usage
from labgate.db.session import Database
from labgate.events import Discard, Publisher

MAX_LIMIT = 10_000_000


class QuotaExceeded(LabgateError):
    status = 409
    code = "quota_exceeded"


@dataclass(frozen=True)
class OwnerQuota:
    """An owner's limits (0 = none) and what they hold now."""

    owner: str
    forwards_limit: int
    ports_limit: int
    forwards: int
    ports: int
    overridden: bool


def effective(defaults: LimitsConfig, row: OwnerLimit | None) -> tuple[int, int]:
    forwards = row.forwards if row is not None and row.forwards is not None else defaults.forwards_per_owner
    ports = row.ports if row is not None and row.ports is not None else defaults.ports_per_owner
    return forwards, ports


def check_quota(s: Session, defaults: LimitsConfig, principal: Principal, ports: int, forwards: int = 1) -> None:
    """Raise QuotaExceeded if `forwards` more forwards (one, or a batch's) of `ports` ports in all would take the
    owner over a limit. Runs inside the create's write transaction (on SQLite writers are serialized, so two
    creates cannot both pass the last slot)."""
    if principal.admin:
        return
    max_forwards, max_ports = effective(defaults, owner_limit(s, principal.owner))
    held, held_ports = owner_usage(s, principal.owner)
    hint = "delete forwards you no longer use, or ask an admin to raise your limit (PUT /api/v1/limits/{owner})"
    if max_forwards and held + forwards > max_forwards:
        more = "" if forwards == 1 else f" and asks for {forwards} more"
        raise QuotaExceeded(f"{principal.owner} holds {held} forwards{more}, the limit is {max_forwards}: {hint}")
    if max_ports and held_ports + ports > max_ports:
        raise QuotaExceeded(f"{principal.owner} holds {held_ports} external ports and asks for {ports} more, the "
                            f"limit is {max_ports}: {hint}", field="port_count")


def get_quota(db: Database, defaults: LimitsConfig, principal: Principal, owner: str) -> OwnerQuota:
    """An owner's quota: their own for anyone, everyone's for admins (someone else's is a 404 otherwise)."""
    check_owner(owner)
    if not principal.admin and owner != principal.owner:
        raise NotFound(f"no limits for {owner!r}")
    with db.reader() as s:
        row = owner_limit(s, owner)
        forwards, ports = owner_usage(s, owner)
    max_forwards, max_ports = effective(defaults, row)
    return OwnerQuota(owner, max_forwards, max_ports, forwards, ports, row is not None)


def limits_snapshot(owner: str, row: OwnerLimit | None) -> dict[str, Any]:
    """What the audit trail records of an owner's limits: the overrides as set (0 = no limit, None = the [limits]
    default), as PUT /api/v1/limits/{owner} takes them."""
    return {"owner": owner, "forwards": row.forwards if row is not None else None,
            "ports": row.ports if row is not None else None}


def set_quota(db: Database, defaults: LimitsConfig, principal: Principal, owner: str, *,
              forwards: int | None, ports: int | None, publisher: Publisher | None = None) -> OwnerQuota:
    """Admins only: set (an int, 0 = no limit) or reset to the default (None) an owner's limits. Audited as
    "limits.update" (object_id None: the owner is in before/after)."""
    if not principal.admin:
        raise NotFound(f"no limits for {owner!r}")  # not an admin: the endpoint reveals nothing
    check_owner(owner)
    for name, value in (("forwards", forwards), ("ports", ports)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value <= MAX_LIMIT):
            raise InvalidInput(f"{name} must be an integer from 0 (no limit) to {MAX_LIMIT}, or null (the default)",
                               field=name)
    with db.writer() as s, s.begin():
        row = owner_limit(s, owner)
        before = limits_snapshot(owner, row)
        if forwards is None and ports is None:
            if row is not None:
                s.delete(row)
            row = None
        else:
            if row is None:
                row = OwnerLimit(owner=owner)
                s.add(row)
            row.forwards, row.ports, row.updated_by = forwards, ports, principal.owner
        s.flush()
        event = audit.record(s, principal, "limits.update", None, before=before, after=limits_snapshot(owner, row))
    (publisher or Discard()).publish(event)
    return get_quota(db, defaults, principal, owner)
