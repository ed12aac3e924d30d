"""Many forward changes as one: creates, deletes and (declaratively) "make these forwards exist as described", in
one database transaction and one kernel batch, all or nothing (POST /api/v1/forwards/batch and /apply).

Automation that builds a 500-VM lab would otherwise send a thousand requests, each its own transaction and kernel
change. A batch applies to one gateway (its one kernel batch); each item is checked exactly as a single create is,
and an error names the item (`create[3].target_address`). Nothing is changed when anything is refused: the
database rolls back, the kernel batch is atomic, and the ports a refused batch looked at are given back.

`ensure` (apply): each item names a machine (`name`); the owner's forward of that name, target port and protocol
on the gateway is left as it is when it matches, changed when its target or the settings the item states differ
(its open sessions are cut when its target moved), created when missing. Settings an item does not state
(kind, description, allowed_sources, enabled) are left as they are on an existing forward."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labgate.core import audit
from labgate.core.errors import InvalidInput, LabgateError, NotFound, PortTaken, RangeExhausted
from labgate.core.limits import check_quota
from labgate.core.rules import rule_of
from labgate.core.tokens import Principal
from labgate.core.views import ForwardView
from labgate.dataplane.reconcile import RuleChange
from labgate.db.ids import reserve_forward_id
from labgate.db.models import Forward, PortAllocation, utcnow
from labgate.db.queries import port_holder

if TYPE_CHECKING:
    from labgate.core.forwards import ForwardService, ForwardSpec, Prepared

log = logging.getLogger("labgate.forwards")

MAX_ITEMS = 50_000
# What an apply compares and may change on a forward that exists (the rest identifies it, or cannot change).
ENSURED = ("target_address", "kind", "description", "allowed_sources", "enabled")


@dataclass
class BatchOutcome:
    forwards: list[ForwardView]  # the created (and with ensure, the changed and unchanged) ones, in request order
    deleted: list[int] = field(default_factory=list)
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    applied: bool = True  # False: committed, its gateway's agent has not applied it yet (pending)
    gateway: str | None = None


def _at(exc: LabgateError, where: str, index: int) -> LabgateError:
    """The same error, saying which item of the batch it is about."""
    exc.message = f"{where}[{index}]: {exc.message}"
    exc.field = f"{where}[{index}]" + (f".{exc.field}" if exc.field else "")
    exc.args = (exc.message,)
    return exc


def run_batch(svc: "ForwardService", principal: Principal, creates: list["ForwardSpec"], deletes: list[int], *,
              ensure: bool = False, given: list[set[str]] | None = None) -> BatchOutcome:
    """`ensure`: apply (see the module). `given`: with ensure, the fields each item states; an existing forward's
    other settings (its description, say) are left as they are. Default: every field is stated."""
    if not creates and not deletes:
        raise InvalidInput("the batch is empty: give forwards to create and/or ids to delete", field="create")
    if len(creates) + len(deletes) > MAX_ITEMS:
        raise InvalidInput(f"a batch holds at most {MAX_ITEMS} items ({len(creates) + len(deletes)} given): send "
                           "several", field="create")
    seen: set[int] = set()
    for i, fid in enumerate(deletes):
        if fid in seen:
            raise InvalidInput(f"delete[{i}]: forward {fid} is named twice", field=f"delete[{i}]")
        seen.add(fid)
    prepared: list[Prepared] = []
    for i, spec in enumerate(creates):
        if ensure and not spec.name:
            raise InvalidInput(f"forwards[{i}]: an applied forward needs a name (the machine it belongs to)",
                               field=f"forwards[{i}].name")
        try:
            prepared.append(svc.prepare(principal, spec))
        except LabgateError as exc:
            raise _at(exc, "forwards" if ensure else "create", i) from None
    if ensure:
        keys = [(p.name, p.spec.target_port, p.protocol) for p in prepared]
        dup = next((i for i, k in enumerate(keys) if k in keys[:i]), None)
        if dup is not None:
            raise InvalidInput(f"forwards[{dup}]: {keys[dup][0]} {keys[dup][2]}/{keys[dup][1]} is listed twice",
                               field=f"forwards[{dup}]")

    with svc.db.writer() as s:
        doomed = _load_deletes(svc, s, principal, deletes)
        gateways = {p.cfg.name for p in prepared} | {f.gateway for f in doomed}
        if len(gateways) > 1:
            raise InvalidInput(f"a batch changes one gateway (one kernel batch); this one touches "
                               f"{', '.join(sorted(gateways))}: send one batch per gateway", field="create")
        gateway = next(iter(gateways))
        existing = _existing(s, principal, gateway, prepared) if ensure else {}
        new = [p for p in prepared if (p.name, p.spec.target_port, p.protocol) not in existing]
        updates = [(p, existing[(p.name, p.spec.target_port, p.protocol)]) for p in prepared
                   if (p.name, p.spec.target_port, p.protocol) in existing]
        for p, fwd in updates:
            if p.spec.external_port is not None and p.spec.external_port != fwd.external_port or \
                    p.count != fwd.port_count:
                raise InvalidInput(f"forwards[{prepared.index(p)}]: forward {fwd.id} exists with external port "
                                   f"{fwd.external_port} ({fwd.port_count} port(s)); these cannot change: delete it "
                                   "first", field=f"forwards[{prepared.index(p)}].external_port")
        check_quota(s, svc.settings.limits, principal, sum(p.count for p in new), forwards=len(new))
        _check_ports(svc, s, principal, new)
        first = reserve_forward_id(s, len(new)) if new else None
        if first is not None:
            # SQLite: the ids were committed with the checks' transaction; read again what another writer may have
            # changed in between (a refusal now leaves those ids unused, never reused).
            check_quota(s, svc.settings.limits, principal, sum(p.count for p in new), forwards=len(new))
            doomed = _load_deletes(svc, s, principal, deletes)
            existing = _existing(s, principal, gateway, prepared) if ensure else {}
            updates = [(p, existing[(p.name, p.spec.target_port, p.protocol)]) for p in prepared
                       if (p.name, p.spec.target_port, p.protocol) in existing]
            if len(updates) + len(new) != len(prepared):
                raise PortTaken("another request changed these forwards meanwhile: try again", field="forwards")
        cfg, gwdp = svc._gateway(gateway)
        from labgate.core.forwards import external_of  # noqa: PLC0415 - forwards imports this module

        ext = external_of(gwdp)
        remove, add, cut, trails, events = [], [], [], [], []
        for fwd in doomed:
            if fwd.enabled and fwd.orphaned_at is None:
                remove.append(rule_of(fwd, ext))
                cut.append(fwd.id)
            trails.append(("forward.delete", fwd.id, audit.forward_snapshot(fwd), None))
            events.append(("deleted", fwd, {}))
            s.delete(fwd)
        changed: list[Forward] = []
        stated = {id(p): (given[i] if given is not None else set(ENSURED)) for i, p in enumerate(prepared)}
        for p, fwd in updates:
            before = audit.forward_snapshot(fwd)
            old_rule = rule_of(fwd, ext) if fwd.enabled else None
            old_target = (fwd.target_address, fwd.target_port)
            wanted = {"target_address": p.target, "kind": p.kind, "description": p.description,
                      "allowed_sources": p.sources, "enabled": p.spec.enabled}
            diff = sorted(k for k in ENSURED if (k == "target_address" or k in stated[id(p)])
                          and getattr(fwd, k) != wanted[k])
            if not diff:
                continue
            for k in diff:
                setattr(fwd, k, wanted[k])
            if "target_address" in diff:
                fwd.target_port_id, fwd.target_server_id = (p.cloud.port_id, p.cloud.server_id) if p.cloud else \
                    (None, None)
                fwd.target_server_name = p.cloud.server_name if p.cloud else None
            new_rule = rule_of(fwd, ext) if fwd.enabled else None
            if new_rule != old_rule:
                remove.extend([old_rule] if old_rule else [])
                add.extend([new_rule] if new_rule else [])
                if old_rule and (new_rule is None or old_target != (fwd.target_address, fwd.target_port)):
                    cut.append(fwd.id)
            trails.append(("forward.update", fwd.id, before, audit.forward_snapshot(fwd)))
            events.append(("updated", fwd, {"changed": ",".join(diff)}))
            changed.append(fwd)
        made: list[SimpleNamespace] = []
        taken: list[tuple[Any, int, int]] = []
        committed = False
        try:
            # The requested ports first, then the automatic blocks (which must not take a port asked for later).
            starts: dict[int, int] = {}
            for i, p in sorted(enumerate(new), key=lambda ip: ip[1].spec.external_port is None):
                starts[i] = _take(p)
                taken.append((p.pool, starts[i], p.count))
            # The new rows go in with one executemany each (forwards, then their ports), no ORM object per row:
            # at 10,000 forwards the ORM's unit of work was most of the batch's time.
            now = utcnow()
            records = [_record(principal, p, starts[i], now) for i, p in enumerate(new)]
            if records:
                if first is not None:
                    for i, record in enumerate(records):
                        record["id"] = first + i
                    s.execute(insert(Forward.__table__), records)
                else:
                    ids = s.scalars(insert(Forward.__table__).returning(Forward.__table__.c.id,
                                                                        sort_by_parameter_order=True), records).all()
                    for record, fid in zip(records, ids):
                        record["id"] = fid
            rows = []
            for p, record in zip(new, records):
                fwd = SimpleNamespace(**record, generation=0, orphaned_at=None, orphaned_reason=None)
                made.append(fwd)
                rows.extend({"gateway": fwd.gateway, "protocol": fwd.protocol, "port": port, "forward_id": fwd.id}
                            for port in range(fwd.external_port, fwd.external_port + p.count))
                if fwd.enabled:
                    add.append(rule_of(fwd, ext))
                trails.append(("forward.create", fwd.id, None, audit.forward_snapshot(fwd)))
                events.append(("created", fwd, {}))
            try:
                if rows:
                    with s.begin_nested():
                        s.execute(insert(PortAllocation.__table__), rows)  # Core: one executemany
            except IntegrityError:
                for pool in {id(p.pool): p.pool for p in new}.values():
                    pool.load(s)
                raise PortTaken("another request took ports this batch was given: nothing was changed; try again",
                                field="create") from None
            s.flush()
            audit_events = audit.record_many(s, principal, trails)
            applied = svc._commit_synced(s, gwdp, RuleChange(tuple(remove), tuple(add)), cut)
            committed = True
            stamped = [fwd for fwd in made if fwd.enabled]
            if stamped:
                # The commit stamped them all with the same generation (what their status is judged by).
                generation = s.scalar(select(Forward.generation).where(Forward.id == stamped[0].id))
                for fwd in stamped:
                    fwd.generation = generation
        finally:
            if not committed:
                for pool, start, count in taken:
                    pool.release(start, count)
        for fwd in doomed:
            svc._pool(cfg, fwd.protocol).release(fwd.external_port, fwd.port_count)
        log.info("event=forward_batch owner=%s gateway=%s created=%d updated=%d deleted=%d", principal.owner,
                 gateway, len(made), len(changed), len(doomed))
        for action, fwd, extra in events:
            svc._publish(action, fwd, **extra)
        for event in audit_events:
            svc.publisher.publish(event)
    by_key = {(f.name, f.target_port, f.protocol): f for f in (*made, *(fwd for _, fwd in updates))}
    ordered = [by_key[(p.name, p.spec.target_port, p.protocol)] for p in prepared] if ensure else made
    with svc.db.reader() as r:
        from labgate.core.forwards import forward_views  # noqa: PLC0415

        views = forward_views(r, svc.dataplane, ordered)
    return BatchOutcome(views, [f.id for f in doomed], len(made), len(changed), len(updates) - len(changed),
                        applied, gateway)


def _load_deletes(svc: "ForwardService", s: Session, principal: Principal, deletes: list[int]) -> list[Forward]:
    """The forwards to delete, locked, in the order given; the first one missing or not the caller's is refused
    exactly as a single delete would be (NotFound, ownership not leaked). One query per 500 ids, not one per id."""
    found: dict[int, Forward] = {}
    for lo in range(0, len(deletes), 500):
        chunk = deletes[lo:lo + 500]
        found.update((f.id, f) for f in s.scalars(select(Forward).where(Forward.id.in_(chunk)).with_for_update()))
    out = []
    for i, fid in enumerate(deletes):
        fwd = found.get(fid)
        if fwd is None or not svc._visible(principal, fwd):
            raise _at(NotFound(f"forward {fid} does not exist"), "delete", i)
        out.append(fwd)
    return out


def _existing(s: Session, principal: Principal, gateway: str, prepared: list["Prepared"]) -> dict[tuple, Forward]:
    """The owner's forwards on `gateway` that the applied items name: (name, target port, protocol) -> forward."""
    names = {p.name for p in prepared}
    found: dict[tuple, Forward] = {}
    # All of the owner's forwards on the gateway, not an IN list of thousands of names (SQLite's limit on
    # parameters); those the batch does not name are skipped.
    for fwd in s.scalars(select(Forward).where(Forward.owner == principal.owner, Forward.gateway == gateway,
                                                Forward.orphaned_at.is_(None)).order_by(Forward.id)):
        if fwd.name in names:
            found.setdefault((fwd.name, fwd.target_port, fwd.protocol), fwd)
    return found


def _check_ports(svc: "ForwardService", s: Session, principal: Principal, new: list["Prepared"]) -> None:
    """409 when a requested port is taken (or asked twice in the batch) or the ranges cannot hold every automatic
    block: found by reading only; the ports are taken later, when the ids are."""
    asked: dict[tuple[str, int], int] = {}
    for i, p in enumerate(new):
        start = p.spec.external_port
        if start is None:
            continue
        for port in range(start, start + p.count):
            if (p.protocol, port) in asked:
                raise _at(PortTaken(f"external port {port}/{p.protocol} is asked twice in this batch (also by "
                                    f"create[{asked[(p.protocol, port)]}])"), "create", i)
            asked[(p.protocol, port)] = i
        holder = port_holder(s, p.cfg.name, p.protocol, start, start + p.count - 1)
        if holder is not None:
            raise _at(svc._port_taken(s, p.cfg.name, p.protocol, start, holder, principal), "create", i)
    # The automatic blocks, taken for a look and given back: the requested ones first, as the real pass does.
    looked: list[tuple[Any, int, int]] = []
    try:
        for p in new:
            p.pool.ensure_loaded(s)
        for p in new:
            if p.spec.external_port is not None:
                if p.pool.is_free(p.spec.external_port, p.count):
                    p.pool.take(p.spec.external_port, p.count)
                    looked.append((p.pool, p.spec.external_port, p.count))
        for i, p in enumerate(new):
            if p.spec.external_port is None:
                found = p.pool.take_lowest(p.count)
                if found is None:
                    raise _at(RangeExhausted(f"no free block of {p.count} {p.protocol} port(s) left on gateway "
                                             f"{p.cfg.name!r} for this batch (its first {i} fit)",
                                             field="external_port"), "create", i)
                looked.append((p.pool, found, p.count))
    finally:
        for pool, start, count in looked:
            pool.release(start, count)


def _take(p: "Prepared") -> int:
    """Take the item's ports in the process's picture (the database's unique key has the last word)."""
    if p.spec.external_port is not None:
        p.pool.take(p.spec.external_port, p.count)
        return p.spec.external_port
    found = p.pool.take_lowest(p.count)
    if found is None:
        raise RangeExhausted(f"no free block of {p.count} {p.protocol} port(s) left on gateway {p.cfg.name!r}",
                             field="external_port")
    return found


def _record(principal: Principal, p: "Prepared", start: int, now: Any) -> dict[str, Any]:
    """The columns of a new forward (all of them but id, generation and the orphan marks), as ForwardService's
    create would set them."""
    cloud = p.cloud
    return {"gateway": p.cfg.name, "protocol": p.protocol, "external_port": start, "port_count": p.count,
            "target_address": p.target, "target_port": p.spec.target_port, "name": p.name, "kind": p.kind,
            "owner": principal.owner, "description": p.description, "enabled": p.spec.enabled,
            "allowed_sources": list(p.sources or []), "created_at": now, "updated_at": now,
            "target_port_id": cloud.port_id if cloud else None, "target_server_id": cloud.server_id if cloud else None,
            "target_server_name": cloud.server_name if cloud else None}
