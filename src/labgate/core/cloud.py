"""Forward changes the cloud causes (OpenStack, docs/openstack.md): a port's new address, a deleted port or VM, a
deleted router. The monitor (labgate/openstack/) decides; these commands apply, each batch in one database
transaction and one kernel change per gateway (so the forwards of one VM move together), audited as the
`openstack` actor, published as forward events with the reason, and sessions of removed or retargeted forwards cut.

Also the TargetResolver protocol: how a create that names a Neutron port or a server (or an address on a router
gateway) finds its gateway, address and port, without core knowing about OpenStack.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select

from labgate.config import GatewayConfig
from labgate.core import audit
from labgate.core import validation as v
from labgate.core.rules import rule_of
from labgate.core.tokens import Principal
from labgate.dataplane.reconcile import RuleChange
from labgate.db import cluster
from labgate.db.models import CloudRouter, Forward
from labgate.events import Event

if TYPE_CHECKING:
    from labgate.core.forwards import ForwardService
    from labgate.db.session import Database

log = logging.getLogger("labgate.openstack")

# Who the audit trail names for the changes the cloud caused.
SYSTEM = Principal("openstack", role="admin")


@dataclass(frozen=True)
class Resolved:
    """Where a forward to a cloud target goes: the router gateway, the address, and the port and server it follows
    (None for an address no port holds)."""

    gateway: str
    address: str
    port_id: str | None = None
    server_id: str | None = None
    server_name: str | None = None


class TargetResolver(Protocol):
    def resolve(self, *, gateway: str | None, address: str | None, port_id: str | None, server: str | None,
                project: str | None) -> Resolved: ...


@dataclass
class CloudChange:
    """What one cycle changes on one gateway: forward id -> new address / reason / (port id, server id).
    `looked_at`: when the look these changes come from began; a forward created or changed since then was made from
    newer facts than the look's (a port read by its create, an address given by hand), so it is left to the next
    look."""

    retarget: dict[int, str] = field(default_factory=dict)
    remove: dict[int, str] = field(default_factory=dict)
    orphan: dict[int, str] = field(default_factory=dict)
    bind: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    looked_at: datetime | None = None

    @property
    def empty(self) -> bool:
        return not (self.retarget or self.remove or self.orphan or self.bind)


def save_router(db: "Database", cfg: GatewayConfig, revision: int) -> None:
    """Remember a served router (insert or update; served again if it was gone)."""
    assert cfg.router_id is not None
    with db.writer() as s:
        row = s.get(CloudRouter, cfg.name)
        if row is None:
            row = CloudRouter(gateway=cfg.name, router_id=cfg.router_id)
            s.add(row)
        row.router_name = cfg.router_name or ""
        row.project_id = cfg.project_id or ""
        row.external_address = None if cfg.external_address == "auto" else cfg.external_address
        row.target_networks = list(cfg.target_networks)
        row.port_range = list(cfg.port_range)
        row.revision = revision
        row.gone_at = None
        # Agents (on the routers' hosts) follow the routers recorded here: woken now, not at their next poll.
        cluster.notify_in(s, cfg.name)
        s.commit()


# Why a router's forwards were orphaned: when the router comes back (the same id, served again), these and only
# these are restored; a forward orphaned for its own port stays orphaned.
ROUTER_DELETED = "router deleted"
ROUTER_UNPLUGGED = "router lost its external gateway"
ROUTER_REASONS = (ROUTER_DELETED, ROUTER_UNPLUGGED)


def router_gone(svc: "ForwardService", gateway: str, reason: str) -> int:
    """The router of `gateway` was deleted (or lost its external gateway): remember it as gone and orphan its
    forwards (their ports stay reserved until an admin deletes them, or the router comes back: `router_back`).

    The commit happens under the gateway's lock, which then marks it retiring: a create that found the gateway
    before is refused (503, nothing changed) instead of committing a live forward on a router that is gone. Their
    sessions are cut while the namespace is still there; the caller then removes the gateway. Returns how many
    forwards were orphaned."""
    assert reason in ROUTER_REASONS, reason
    now = datetime.now(timezone.utc)
    events: list[Event] = []
    gwdp = svc.dataplane.get(gateway)
    with svc.db.writer() as s:
        row = s.get(CloudRouter, gateway)
        if row is not None:
            row.gone_at = now
        fwds = list(s.scalars(select(Forward).where(Forward.gateway == gateway, Forward.orphaned_at.is_(None))
                              .with_for_update()))
        live = [f.id for f in fwds if f.enabled]
        for fwd in fwds:
            before = audit.forward_snapshot(fwd)
            fwd.orphaned_at, fwd.orphaned_reason = now, reason
            events.append(audit.record(s, SYSTEM, "forward.orphan", fwd.id, before=before,
                                       after=audit.forward_snapshot(fwd)))
        s.flush()
        cluster.notify_in(s, gateway)  # the router's agent stops serving it now, not at its next poll
        if gwdp is None:
            s.commit()
        else:
            with gwdp.lock:  # the order every writer takes: database first, then the gateway
                s.commit()
                gwdp.retiring = True
    if gwdp is not None:
        gwdp.cut(live)
    for fwd in fwds:
        svc._publish("orphaned", fwd, reason=reason)
    for event in events:
        svc.publisher.publish(event)
    if fwds:
        log.warning("event=forwards_orphaned gateway=%s count=%d reason=%r", gateway, len(fwds), reason)
    return len(fwds)


def router_back(svc: "ForwardService", gateway: str) -> int:
    """A router that was gone is served again (the same id: its deletion was not one, or its external gateway came
    back): the forwards orphaned for the router's sake are live again, on the ports they kept. Call before the
    gateway is put back in the dataplane, so that its first sync has them. Returns how many were restored."""
    events: list[Event] = []
    with svc.db.writer() as s:
        fwds = list(s.scalars(select(Forward).where(Forward.gateway == gateway,
                                                    Forward.orphaned_reason.in_(ROUTER_REASONS))
                              .order_by(Forward.id).with_for_update()))
        for fwd in fwds:
            before = audit.forward_snapshot(fwd)
            fwd.orphaned_at, fwd.orphaned_reason = None, None
            events.append(audit.record(s, SYSTEM, "forward.restore", fwd.id, before=before,
                                       after=audit.forward_snapshot(fwd)))
        s.commit()
    for fwd in fwds:
        svc._publish("restored", fwd, reason="router back")
    for event in events:
        svc.publisher.publish(event)
    if fwds:
        log.warning("event=forwards_restored gateway=%s count=%d", gateway, len(fwds))
    return len(fwds)


def apply_changes(svc: "ForwardService", gateway: str, change: CloudChange) -> dict[str, int]:
    """Apply one cycle's changes to one gateway's forwards in one transaction and one kernel change. Returns
    {"forward_retargeted" | "forward_deleted" | "forward_orphaned" | "forward_bound": count}."""
    from labgate.core.forwards import external_of  # noqa: PLC0415 - forwards imports this module's types

    gwdp = svc.dataplane.get(gateway)
    if gwdp is None:
        return {}
    ids = set(change.retarget) | set(change.remove) | set(change.orphan) | set(change.bind)
    now = datetime.now(timezone.utc)
    done = {"forward_retargeted": 0, "forward_deleted": 0, "forward_orphaned": 0, "forward_bound": 0}
    published: list[tuple[str, Forward, dict]] = []
    trails: list[Event] = []
    released: list[tuple[str, int, int]] = []
    with svc.db.writer() as s:
        ext = external_of(gwdp)
        fwds = list(s.scalars(select(Forward).where(Forward.id.in_(ids), Forward.gateway == gateway,
                                                    Forward.orphaned_at.is_(None))
                              .order_by(Forward.id).with_for_update()))
        remove, add, cut = [], [], []
        for fwd in fwds:
            if change.looked_at is not None and fwd.updated_at is not None and fwd.updated_at >= change.looked_at:
                continue  # newer than the look
            before = audit.forward_snapshot(fwd)
            old_rule = rule_of(fwd, ext) if fwd.enabled else None
            if fwd.id in change.remove:
                remove.append(old_rule)
                cut.append(fwd.id)
                released.append((fwd.protocol, fwd.external_port, fwd.port_count))
                s.delete(fwd)
                trails.append(audit.record(s, SYSTEM, "forward.delete", fwd.id, before=before, after=None))
                published.append(("deleted", fwd, {"reason": change.remove[fwd.id]}))
                done["forward_deleted"] += 1
                continue
            if fwd.id in change.orphan:
                fwd.orphaned_at, fwd.orphaned_reason = now, change.orphan[fwd.id][:255]
                remove.append(old_rule)
                cut.append(fwd.id)
                trails.append(audit.record(s, SYSTEM, "forward.orphan", fwd.id, before=before,
                                           after=audit.forward_snapshot(fwd)))
                published.append(("orphaned", fwd, {"reason": change.orphan[fwd.id]}))
                done["forward_orphaned"] += 1
                continue
            if fwd.id in change.bind:
                fwd.target_port_id, fwd.target_server_id = change.bind[fwd.id]
                done["forward_bound"] += 1
            if fwd.id in change.retarget:
                try:
                    target = v.check_target(change.retarget[fwd.id], gwdp.cfg, gwdp.local_addresses)
                except Exception as exc:  # noqa: BLE001 - an address the gateway cannot reach: leave it, say so
                    log.error("event=retarget_refused forward=%d address=%s reason=%r", fwd.id,
                              change.retarget[fwd.id], str(exc))
                    continue
                old_address = fwd.target_address
                fwd.target_address = str(target)
                if old_rule is not None:
                    remove.append(old_rule)
                    add.append(rule_of(fwd, ext))
                    cut.append(fwd.id)
                trails.append(audit.record(s, SYSTEM, "forward.update", fwd.id, before=before,
                                           after=audit.forward_snapshot(fwd)))
                published.append(("updated", fwd, {"changed": "target_address", "reason":
                                                   f"port {fwd.target_port_id} moved from {old_address}"}))
                done["forward_retargeted"] += 1
        s.flush()
        if remove or add:
            svc._commit_synced(s, gwdp, RuleChange.of(remove, add), cut)
        else:
            s.commit()
    for proto, start, count in released:
        pool = svc._pools.get((gateway, proto))
        if pool is not None:
            pool.release(start, count)
    for action, fwd, extra in published:
        svc._publish(action, fwd, **extra)
    for trail in trails:
        svc.publisher.publish(trail)
    for what in ("forward_retargeted", "forward_deleted", "forward_orphaned"):
        if done[what]:
            log.info("event=%s gateway=%s count=%d", what, gateway, done[what])
    return {k: n for k, n in done.items() if n}
