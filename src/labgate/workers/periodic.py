"""A background loop that runs one function every `interval` seconds and survives its failures."""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("labgate.workers")


class Periodic:
    """Runs `fn` now and then every `interval` seconds on its own daemon thread until stop()."""

    def __init__(self, name: str, interval: float, fn: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval
        self.fn = fn
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.last_error: str | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.fn()
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - a worker must outlive any one failure
                if str(exc) != self.last_error:
                    log.exception("event=worker_failed worker=%s", self.name)
                self.last_error = str(exc)
            self.runs += 1
            self._wake.wait(self.interval)
            self._wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def trigger(self) -> None:
        """Run again now instead of waiting out the interval."""
        self._wake.set()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
