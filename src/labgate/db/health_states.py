"""The health monitor's bulk reads and writes of address_health and forward_state's port columns.

A cycle over 50,000 addresses reads and writes 50,000 rows of each: as ORM objects that cost seconds (and held the
write lock for all of it), so these read plain tuples and write with one executemany per kind of change.  The
caller reads with a reader session, decides the new states, then writes them with a writer session in a short
transaction (and commits).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Iterable

from sqlalchemy import Integer, bindparam, delete, exists, insert, literal_column, select, update
from sqlalchemy.orm import Session

from labgate.db.models import AddressHealth, Forward, ForwardState

_ADDRESS = AddressHealth.__table__
_STATE = ForwardState.__table__


def address_states(s: Session, gateway: str) -> dict[str, tuple[str, int, float | None]]:
    """{address: (state, failures, rtt_ms)} of the gateway's address_health rows."""
    rows = s.execute(select(_ADDRESS.c.address, _ADDRESS.c.state, _ADDRESS.c.failures, _ADDRESS.c.rtt_ms)
                     .where(_ADDRESS.c.gateway == gateway))
    return {address: (state, failures or 0, rtt) for address, state, failures, rtt in rows}


def port_states(s: Session, gateway: str) -> dict[int, tuple[str, int]]:
    """{forward_id: (port_state, port_failures)} of the gateway's forwards that have a forward_state row."""
    rows = s.execute(select(_STATE.c.forward_id, _STATE.c.port_state, _STATE.c.port_failures)
                     .join(Forward.__table__, Forward.__table__.c.id == _STATE.c.forward_id)
                     .where(Forward.__table__.c.gateway == gateway))
    one = {}.setdefault  # one str object per state, not one per row
    return {fid: (one(state, state), failures or 0) for fid, state, failures in rows}


def _by_columns(rows: Iterable[dict]) -> dict[tuple[str, ...], list[dict]]:
    """Rows grouped by the columns they set (one executemany needs the same keys in every row)."""
    groups: dict[tuple[str, ...], list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(sorted(row))].append(row)
    return groups


def write_address_states(s: Session, gateway: str, new: list[dict], changed: list[dict],
                         gone: Iterable[str]) -> None:
    """Through writer session `s` (the caller commits): insert the `new` rows (every column but gateway, which is
    `gateway`), update the `changed` ones (each dict has "address" and the columns to set; rows setting different
    columns are fine) and delete the rows of addresses `gone`."""
    for chunk in _chunks(new):
        s.execute(insert(_ADDRESS), [{"gateway": gateway, **row} for row in chunk])
    where = (_ADDRESS.c.gateway == bindparam("b_gateway")) & (_ADDRESS.c.address == bindparam("b_address"))
    for columns, rows in _by_columns(changed).items():
        sets = [c for c in columns if c != "address"]
        stmt = update(_ADDRESS).where(where).values({c: bindparam(f"v_{c}") for c in sets})
        for chunk in _chunks(rows):
            s.execute(stmt, [{"b_gateway": gateway, "b_address": row["address"], **{f"v_{c}": row[c] for c in sets}}
                             for row in chunk])
    for chunk in _chunks(list(gone)):
        s.execute(delete(_ADDRESS).where(where), [{"b_gateway": gateway, "b_address": a} for a in chunk])


def write_port_states(s: Session, missing: Iterable[int], rows: list[tuple[int, str, int]],
                      checked_at: datetime) -> None:
    """Through writer session `s` (the caller commits): make sure forward_state rows of the forwards `missing` exist
    (created with zero usage, only for forwards that still exist and have none yet: a forward may be deleted, or
    the usage collector may create its row, at any moment), then set port_state and port_failures from `rows`
    ((forward_id, port_state, port_failures) tuples) and port_checked_at to `checked_at`."""
    missing = list(missing)
    if missing:
        fid = bindparam("b_id", type_=Integer)
        absent = (exists().where(Forward.__table__.c.id == fid)
                  & ~exists().where(_STATE.c.forward_id == fid))
        zero = literal_column("0")
        stmt = insert(_STATE).from_select(
            ["forward_id", "port_state", "port_failures", "connections", "packets", "bytes", "raw_connections",
             "raw_packets", "raw_bytes"],
            select(fid, literal_column("'unknown'"), zero, zero, zero, zero, zero, zero, zero).where(absent))
        for chunk in _chunks(missing):
            s.execute(stmt, [{"b_id": i} for i in chunk])
    if rows:
        stmt = (update(_STATE).where(_STATE.c.forward_id == bindparam("b_id"))
                .values(port_state=bindparam("v_state"), port_failures=bindparam("v_failures"),
                        port_checked_at=bindparam("v_checked")))
        for chunk in _chunks(rows):
            s.execute(stmt, [{"b_id": fid, "v_state": state, "v_failures": failures, "v_checked": checked_at}
                             for fid, state, failures in chunk])


WRITE_CHUNK = 2_000  # rows per executemany: the parameter lists of 50,000 rows at once peaked the server ~45 MiB


def _chunks(items: list) -> Iterable[list]:
    for i in range(0, len(items), WRITE_CHUNK):
        yield items[i:i + WRITE_CHUNK]
