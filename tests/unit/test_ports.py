"""PortPool (labgate.core.ports): this process's picture of the taken ports of one (gateway, protocol). The lowest
free port or block inside one range, several ranges, take/release, exhaustion; and the picture against a real
SQLite database (made by labgate's own Database and migrations): loaded from it, only its own gateway and
protocol, and a stale picture corrected by a reload after the unique constraint refused a port."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from labgate.core.ports import PortPool
from labgate.db.migrate import upgrade
from labgate.db.models import Forward, PortAllocation
from labgate.db.session import Database
from tests.harness import database_url


def drain(pool: PortPool, count: int = 1) -> list[int]:
    """Every block `take_lowest` hands out until it answers None, in order."""
    out: list[int] = []
    while (start := pool.take_lowest(count)) is not None:
        out.append(start)
        assert len(out) <= 65536, "take_lowest never ran out"
    return out


# --- the picture alone ----------------------------------------------------------------------------------------------
def test_the_lowest_free_port_comes_first_and_a_released_one_is_found_again() -> None:
    pool = PortPool("gw", "tcp", [(4000, 4009)])
    assert [pool.take_lowest(1) for _ in range(3)] == [4000, 4001, 4002]
    pool.release(4001, 1)
    assert pool.take_lowest(1) == 4001          # the hole, not the next port after the last one taken
    assert pool.take_lowest(1) == 4003


def test_take_marks_a_requested_block_and_the_search_goes_around_it() -> None:
    pool = PortPool("gw", "udp", [(4000, 4009)])
    pool.take(4001, 3)                          # a requested external_port with port_count 3: 4001-4003
    assert pool.take_lowest(1) == 4000
    assert pool.take_lowest(1) == 4004
    pool.release(4001, 3)
    assert drain(pool) == [4001, 4002, 4003] + list(range(4005, 4010))


def test_a_block_is_the_lowest_run_of_free_ports_long_enough() -> None:
    pool = PortPool("gw", "tcp", [(4000, 4019)])
    pool.take(4001, 1)
    pool.take(4005, 1)
    # free runs: 4000, 4002-4004, 4006-4019
    assert pool.take_lowest(3) == 4002
    assert pool.take_lowest(3) == 4006
    assert pool.take_lowest(1) == 4000
    assert pool.take_lowest(2) == 4009          # 4006-4008 are the block taken above


def test_a_block_ends_exactly_at_the_end_of_its_range_and_never_runs_past_it() -> None:
    pool = PortPool("gw", "tcp", [(4000, 4004)])
    pool.take(4000, 1)
    assert pool.take_lowest(5) is None          # only 4 ports left
    assert pool.take_lowest(4) == 4001          # 4001-4004: the last port of the range included
    assert pool.take_lowest(1) is None


def test_a_block_never_spans_two_ranges_even_adjacent_ones() -> None:
    pool = PortPool("gw", "tcp", [(4000, 4002), (4003, 4009)])
    assert pool.take_lowest(4) == 4003          # 4000-4003 would straddle the two ranges
    assert pool.take_lowest(3) == 4000
    assert pool.in_ranges(4003, 4) and not pool.in_ranges(4000, 4) and not pool.in_ranges(4008, 3)


def test_several_ranges_are_searched_lowest_first_whatever_order_they_are_given_in() -> None:
    pool = PortPool("gw", "tcp", [(6000, 6001), (4000, 4001), (5000, 5002)])
    assert drain(pool) == [4000, 4001, 5000, 5001, 5002, 6000, 6001]


def test_a_block_too_long_for_the_lower_ranges_lands_in_the_first_that_holds_it() -> None:
    pool = PortPool("gw", "tcp", [(4000, 4001), (5000, 5009), (6000, 6099)])
    assert pool.take_lowest(10) == 5000
    assert pool.take_lowest(10) == 6000         # 5000-5009 is full now
    assert pool.take_lowest(2) == 4000
    assert pool.take_lowest(200) is None


def test_ports_outside_the_ranges_are_never_handed_out() -> None:
    pool = PortPool("gw", "tcp", [(4000, 4002)])
    handed = drain(pool)
    assert handed == [4000, 4001, 4002]
    assert pool.take_lowest(1) is None
    assert (pool.in_ranges(3999, 1), pool.in_ranges(4000, 3), pool.in_ranges(4002, 1), pool.in_ranges(4002, 2),
            pool.in_ranges(4003, 1)) == (False, True, True, False, False)


def test_exhaustion_takes_nothing_and_a_release_makes_room_again() -> None:
    pool = PortPool("gw", "tcp", [(4000, 4003)])
    assert drain(pool, 2) == [4000, 4002]
    assert pool.take_lowest(1) is None
    pool.release(4001, 1)                       # half of the first block
    assert pool.take_lowest(2) is None          # a single free port is no block of 2 ...
    assert pool.take_lowest(1) == 4001          # ... and the failed search above took nothing
    assert pool.take_lowest(1) is None


def test_a_range_with_one_free_port_always_finds_it() -> None:
    # The vLab original could miss it (100 random tries over 101 ports); the bitmap search cannot.
    pool = PortPool("gw", "tcp", [(4000, 4100)])
    for port in range(4000, 4101):
        if port != 4077:
            pool.take(port, 1)
    assert pool.take_lowest(1) == 4077
    assert pool.take_lowest(1) is None


# --- the picture and the database -----------------------------------------------------------------------------------
@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(database_url(tmp_path, "labgate.db"))
    upgrade(database.engine)
    try:
        yield database
    finally:
        database.dispose()


def allocate(db: Database, gateway: str, protocol: str, start: int, count: int = 1) -> int:
    """What another process does: a forward and its allocation rows, committed. Returns the forward id."""
    with db.writer() as s, s.begin():
        fwd = Forward(gateway=gateway, protocol=protocol, external_port=start, port_count=count,
                      target_address="10.9.0.5", target_port=22, owner="other")
        s.add(fwd)
        s.flush()
        s.add_all([PortAllocation(gateway=gateway, protocol=protocol, port=p, forward_id=fwd.id)
                   for p in range(start, start + count)])
        return fwd.id


def test_load_reads_the_taken_ports_of_its_own_gateway_and_protocol_only(db: Database) -> None:
    allocate(db, "gw", "tcp", 4000)
    allocate(db, "gw", "tcp", 4002, count=2)
    allocate(db, "gw", "udp", 4001)             # another protocol
    allocate(db, "other", "tcp", 4001)          # another gateway
    pool = PortPool("gw", "tcp", [(4000, 4009)])
    with db.reader() as s:
        pool.load(s)
    assert drain(pool) == [4001] + list(range(4004, 4010))


def test_load_sees_the_sessions_own_uncommitted_rows(db: Database) -> None:
    pool = PortPool("gw", "tcp", [(4000, 4003)])
    with db.writer() as s:
        fwd = Forward(gateway="gw", protocol="tcp", external_port=4000, target_address="10.9.0.5", target_port=22,
                      owner="alice")
        s.add(fwd)
        s.flush()
        s.add(PortAllocation(gateway="gw", protocol="tcp", port=4000, forward_id=fwd.id))  # not flushed yet
        pool.load(s)
        s.rollback()
    assert pool.take_lowest(1) == 4001


def test_ensure_loaded_reads_once_and_load_reads_again(db: Database) -> None:
    pool = PortPool("gw", "tcp", [(4000, 4009)])
    with db.reader() as s:
        pool.ensure_loaded(s)                   # an empty database
    allocate(db, "gw", "tcp", 4000)
    with db.reader() as s:
        pool.ensure_loaded(s)                   # already loaded: the picture does not change
    assert pool.take_lowest(1) == 4000          # stale: the database holds 4000
    with db.reader() as s:
        pool.load(s)
    assert pool.take_lowest(1) == 4001


def test_a_stale_picture_is_refused_by_the_constraint_and_corrected_by_a_reload(db: Database) -> None:
    """The allocator's retry path, step by step: the picture says 4000 is free, another process holds it, the
    unique constraint refuses the insert, the reload shows the truth, the next search finds a port really free."""
    pool = PortPool("gw", "tcp", [(4000, 4009)])
    with db.reader() as s:
        pool.load(s)
    allocate(db, "gw", "tcp", 4000, count=3)    # another process, after our load
    guess = pool.take_lowest(1)
    assert guess == 4000
    with pytest.raises(IntegrityError):
        allocate(db, "gw", "tcp", guess)
    with db.reader() as s:
        pool.load(s)
    assert pool.take_lowest(1) == 4003
    allocate(db, "gw", "tcp", 4003)             # accepted: the corrected picture was right


def test_a_reload_frees_what_another_process_released(db: Database) -> None:
    held = allocate(db, "gw", "tcp", 4000, count=2)
    pool = PortPool("gw", "tcp", [(4000, 4001)])
    with db.reader() as s:
        pool.load(s)
    assert pool.take_lowest(1) is None          # full, as far as the picture knows
    with db.writer() as s, s.begin():
        s.execute(delete(PortAllocation).where(PortAllocation.forward_id == held))
    assert pool.take_lowest(1) is None          # still the old picture
    with db.reader() as s:
        pool.load(s)
    assert pool.take_lowest(2) == 4000
