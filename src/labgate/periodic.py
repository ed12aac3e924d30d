"""The one background loop of labgate: run a function now, then again and again on a thread of its own.

    loop = Periodic("usage", 60.0, collector.collect_once)         # every 60 s
    loop = Periodic("ddns", updater.next_wait, updater.run_once)   # the wait is asked for after every run
    loop.start(); loop.trigger(); loop.stop(timeout=10)

The wait after a run is a number of seconds, or a callable asked after every run (a worker that retries sooner
while something failed, or wakes for a deadline of its own, computes it). `trigger()` ends the current wait at
once, and a trigger that comes while the function runs makes it run again right after. A run that raises is
logged (once while it keeps failing with the same message) and the loop carries on; `runs` and `last_error` say
how it went. No labgate imports: every layer may use it.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Union

log = logging.getLogger("labgate.workers")

Wait = Union[float, Callable[[], float]]
# How long to wait when the wait callable itself raised (the failure is logged like a failed run).
FALLBACK_WAIT = 1.0


class Periodic:
    """Runs `fn` now and then after every `wait` seconds on its own daemon thread (named `name`) until stop().

    `logger` and `failure_event` choose the log line of a failed run: by default
    `event=worker_failed worker=<name>` on the "labgate.workers" logger, else `event=<failure_event>`."""

    def __init__(self, name: str, wait: Wait, fn: Callable[[], object], *, logger: logging.Logger | None = None,
                 failure_event: str | None = None) -> None:
        self.name = name
        self.wait = wait
        self.fn = fn
        self._log = logger or log
        self._failure_line = f"event={failure_event}" if failure_event else f"event=worker_failed worker={name}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0  # runs finished, failed ones included
        self.last_error: str | None = None  # str() of the last run's exception; None after a run that succeeded

    @property
    def stopping(self) -> bool:
        """True once stop() was called: a long run may check it to end early."""
        return self._stop.is_set()

    def _failed(self, exc: Exception) -> None:
        if str(exc) != self.last_error:  # a repeated failure is logged once
            self._log.exception("%s", self._failure_line)
        self.last_error = str(exc)

    def _next_wait(self) -> float:
        if not callable(self.wait):
            return self.wait
        try:
            return max(float(self.wait()), 0.0)
        except Exception as exc:  # noqa: BLE001 - the loop must outlive its own arithmetic too
            self._failed(exc)
            return FALLBACK_WAIT

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.fn()
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - a worker must outlive any one failure
                self._failed(exc)
            self.runs += 1
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def start(self) -> None:
        """Start the thread (again, after a stop); the first run is at once."""
        self._stop.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def trigger(self) -> None:
        """Run again now instead of waiting out the wait (at once after the current run, if one is going on)."""
        self._wake.set()

    def stop(self, timeout: float = 10) -> None:
        """No further run; wait up to `timeout` seconds for the current one to end."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
