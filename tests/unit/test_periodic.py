"""labgate.periodic.Periodic, the loop every worker runs on: runs, waits, wake-ups, failures and stop.

Every wait here is for an event with a generous bound; none sleeps to show that something did not happen."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Callable

import pytest

from labgate.periodic import Periodic

BOUND = 10.0  # seconds an expected run may take to show up; only a broken loop ever waits this long
HOUR = 3600.0  # a wait no test outlives: a second run before it needs a trigger


class Runs:
    """A function for the loop that counts its runs and lets a test wait for the n-th."""

    def __init__(self, body: Callable[[int], object] = lambda n: None) -> None:
        self.body = body
        self.count = 0
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.count += 1
            n = self.count
            self._cond.notify_all()
        self.body(n)

    def wait_for(self, n: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= n, timeout=BOUND)


def started(*args, **kw) -> Periodic:
    loop = Periodic(f"test-{uuid.uuid4().hex[:8]}", *args, **kw)
    loop.start()
    return loop


def alive(loop: Periodic) -> bool:
    return any(t.name == loop.name for t in threading.enumerate())


def test_runs_now_and_then_again_after_each_wait():
    runs = Runs()
    loop = started(0.01, runs)
    try:
        assert runs.wait_for(3)
    finally:
        loop.stop()
    assert loop.runs >= 3 and loop.last_error is None


def test_trigger_ends_the_wait_at_once():
    runs = Runs()
    loop = started(HOUR, runs)
    try:
        assert runs.wait_for(1)
        loop.trigger()
        assert runs.wait_for(2)
    finally:
        loop.stop()


def test_a_trigger_during_a_run_makes_it_run_again_right_after():
    inside, release = threading.Event(), threading.Event()

    def body(n: int) -> None:
        if n == 1:
            inside.set()
            assert release.wait(BOUND)

    runs = Runs(body)
    loop = started(HOUR, runs)
    try:
        assert inside.wait(BOUND)
        loop.trigger()  # while the first run is still going on
        release.set()
        assert runs.wait_for(2)
    finally:
        loop.stop()


def test_the_wait_may_be_computed_after_every_run():
    waits = iter([0.0, 0.0])
    asked = []

    def next_wait() -> float:
        asked.append(runs.count)
        return next(waits, HOUR)

    runs = Runs()
    loop = started(next_wait, runs)
    try:
        assert runs.wait_for(3)  # two zero waits, then an hour
        loop.trigger()
        assert runs.wait_for(4)
    finally:
        loop.stop()
    assert asked[:3] == [1, 2, 3]  # asked once after each run, with what that run left behind


def test_a_failing_run_is_logged_once_and_the_loop_carries_on(caplog):
    caplog.set_level(logging.ERROR, logger="labgate.workers")

    def body(n: int) -> None:
        if n <= 3:
            raise ValueError("database is locked")

    runs = Runs(body)
    loop = started(0.0, runs)
    try:
        assert runs.wait_for(4)
    finally:
        loop.stop()
    failures = [r for r in caplog.records if r.getMessage() == f"event=worker_failed worker={loop.name}"]
    assert len(failures) == 1 and failures[0].exc_info is not None  # three failures, one log line
    assert loop.runs >= 4 and loop.last_error is None  # the run after them succeeded


def test_the_failure_line_and_logger_can_be_chosen(caplog):
    logger = logging.getLogger("labgate.test_periodic")
    caplog.set_level(logging.ERROR, logger=logger.name)
    failed = threading.Event()

    def fn() -> None:
        failed.set()
        raise RuntimeError("no route")

    loop = started(HOUR, fn, logger=logger, failure_event="ddns_cycle_failed")
    try:
        assert failed.wait(BOUND)
    finally:
        loop.stop()
    assert [(r.name, r.getMessage()) for r in caplog.records] == [(logger.name, "event=ddns_cycle_failed")]
    assert loop.last_error == "no route"


def test_a_failing_wait_is_logged_and_the_loop_carries_on(caplog):
    caplog.set_level(logging.ERROR, logger="labgate.workers")

    def next_wait() -> float:
        raise ZeroDivisionError("division by zero")

    runs = Runs()
    loop = started(next_wait, runs)
    try:
        assert runs.wait_for(2)  # after the fallback wait
    finally:
        loop.stop()
    assert any("event=worker_failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("during_run", [False, True])
def test_stop_ends_the_thread(during_run):
    inside, release = threading.Event(), threading.Event()

    def body(n: int) -> None:
        if during_run:
            inside.set()
            assert release.wait(BOUND)

    runs = Runs(body)
    loop = started(HOUR, runs)
    assert runs.wait_for(1)
    assert not loop.stopping
    if during_run:
        assert inside.wait(BOUND)
        stopper = threading.Thread(target=loop.stop, kwargs={"timeout": BOUND})
        stopper.start()
        deadline = time.monotonic() + BOUND
        while not loop.stopping:  # stop() has begun; the run is still going on
            assert time.monotonic() < deadline
            time.sleep(0.005)
        release.set()
        stopper.join(BOUND)
    else:
        loop.stop(timeout=BOUND)
    assert loop.stopping and not alive(loop)
    assert runs.count == loop.runs == 1  # no run after stop(), even for the trigger stop() sends to wake it
