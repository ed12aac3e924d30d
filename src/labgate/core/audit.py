"""The audit trail: one row per change (who, with which token, from which address, when, what, before and after).

The row is written in the transaction of the change itself, so a committed change always has its record (a
process killed right after the commit loses nothing) and a change that is rolled back leaves none. The `audit`
event returned by `record()` is published by the caller once the transaction has committed, so the sinks see
every change too (delivery to them is best effort, like every event; the table is the durable record).

Usage inside a command (core/forwards.py, core/tokens.py, core/limits.py):

    with db.writer() as s:
        ...change rows, s.flush()...
        event = audit.record(s, principal, "forward.update", fwd.id, before=before, after=audit.forward_snapshot(fwd))
        ...commit...
    publisher.publish(event)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping

from sqlalchemy import and_, func, insert, select, true
from sqlalchemy.orm import Session

from labgate.core.errors import InvalidInput
from labgate.db.models import Audit, Forward
from labgate.db.session import Database
from labgate.events import Event

if TYPE_CHECKING:
    from labgate.core.tokens import Principal

ACTION_RE = re.compile(r"^([a-z][a-z_]{0,14})\.([a-z][a-z_]{0,14})$")
FORWARD_FIELDS = ("id", "gateway", "protocol", "external_port", "port_count", "target_address", "target_port", "name",
                  "kind", "owner", "description", "enabled", "allowed_sources")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return str(value)


def to_json(value: Mapping[str, Any] | None) -> str | None:
    """An object as compact JSON text (keys sorted, times in RFC 3339 UTC); None stays None."""
    if value is None:
        return None
    return json.dumps(dict(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def forward_snapshot(fwd: Forward) -> dict[str, Any]:
    """What the audit trail records of a forward: its configuration (not its health or usage, not timestamps)."""
    out = {name: getattr(fwd, name) for name in FORWARD_FIELDS}
    out["allowed_sources"] = list(out["allowed_sources"] or [])
    # OpenStack: the port it follows, and why it was orphaned (only when set: other records keep their shape).
    for name in ("target_port_id", "target_server_id", "orphaned_reason"):
        if getattr(fwd, name, None) is not None:
            out[name] = getattr(fwd, name)
    return out


def record_many(s: Session, who: "Principal", entries: list[tuple[str, int | None, Mapping[str, Any] | None,
                                                                  Mapping[str, Any] | None]]) -> list[Event]:
    """`record` for many changes of one transaction (a batch): (action, object_id, before, after) each; one flush."""
    client = who.client[:64] if who.client else None
    now = datetime.now(timezone.utc)
    rows = []
    for action, object_id, before, after in entries:
        m = ACTION_RE.fullmatch(action)
        if m is None:
            raise ValueError(f"audit action {action!r} must look like 'forward.create'")
        rows.append({"time": now, "actor": who.owner[:64], "token_id": who.token_id, "client": client,
                     "action": action, "object_type": m.group(1), "object_id": object_id,
                     "before": to_json(before), "after": to_json(after)})
    if not rows:
        return []
    # One INSERT ... RETURNING for all of them (no ORM object per row: a batch writes thousands).
    table = Audit.__table__
    if s.get_bind().dialect.name == "sqlite":
        # SQLite cannot return ids in parameter order for a many-row insert (SQLAlchemy then inserts row by row).
        # This transaction holds the database's write lock, and AUTOINCREMENT hands out consecutive ids: the
        # rows just inserted are the last len(rows) ids, in order.
        s.execute(insert(table), rows)
        ids = s.execute(select(table.c.id).order_by(table.c.id.desc()).limit(len(rows))).scalars().all()[::-1]
    else:
        ids = s.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True), rows).scalars().all()
    return [Event("audit", now, {"audit_id": audit_id, "actor": r["actor"], "token_id": r["token_id"],
                                 "client": client, "action": r["action"], "object_type": r["object_type"],
                                 "object_id": r["object_id"], "before": r["before"], "after": r["after"]})
            for audit_id, r in zip(ids, rows)]


def record(s: Session, who: "Principal", action: str, object_id: int | None, *,
           before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> Event:
    """Add the audit row of a change to `s`, the session making the change (it commits or rolls back with it), and
    return the `audit` event to publish after the commit.

    action: "<object type>.<verb>" ("forward.create", "forward.update", "forward.delete", "token.create",
    "token.revoke", "limits.update"); before/after: the object as JSON-able dicts (None for "did not exist")."""
    return record_many(s, who, [(action, object_id, before, after)])[0]


@dataclass
class AuditEntry:
    id: int
    time: datetime
    actor: str
    token_id: int | None
    client: str | None
    action: str
    object_type: str
    object_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    @classmethod
    def of(cls, row: Audit) -> "AuditEntry":
        return cls(id=row.id, time=row.time, actor=row.actor, token_id=row.token_id, client=row.client,
                   action=row.action, object_type=row.object_type, object_id=row.object_id,
                   before=json.loads(row.before) if row.before is not None else None,
                   after=json.loads(row.after) if row.after is not None else None)


def page_audit(db: Database, *, actor: str | None = None, action: str | None = None,
               object_type: str | None = None, object_id: int | None = None, since: datetime | None = None,
               limit: int = 50, offset: int = 0) -> tuple[int, list[AuditEntry]]:
    """(how many records match, one page of them), oldest first. `since`: records at or after that time."""
    conds = []
    if actor is not None:
        conds.append(Audit.actor == actor)
    if action is not None:
        conds.append(Audit.action == action)
    if object_type is not None:
        conds.append(Audit.object_type == object_type)
    if object_id is not None:
        conds.append(Audit.object_id == object_id)
    if since is not None:
        if since.tzinfo is None:
            raise InvalidInput("since must carry a time zone (e.g. 2026-05-01T12:00:00Z)", field="since")
        try:
            conds.append(Audit.time >= since.astimezone(timezone.utc))
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: before the first representable UTC time
            raise InvalidInput("since is out of range", field="since") from None
    where = and_(true(), *conds)
    with db.reader() as s:
        total = s.scalar(select(func.count()).select_from(Audit).where(where)) or 0
        rows = s.scalars(select(Audit).where(where).order_by(Audit.id).limit(limit).offset(offset))
        return total, [AuditEntry.of(r) for r in rows]
