"""Delivery of events: the EventBus keeps the recent ones and feeds each sink through a bounded queue and a
thread of its own. What an event is lives in labgate/events.py; the transports in workers/sinks/.

    bus = EventBus(build_sinks(settings.sink)); bus.start()
    bus.publish(Event.new("connection", gateway="lab", forward_id=12, ...))   # never blocks, never raises
    bus.recent(owner="alice", limit=50); bus.stats(); bus.stop(timeout=5)

Delivery guarantees (docs/events.md says more): per sink, events are delivered in publish order, at least once
while the sink's buffer holds them; when a buffer is full the oldest event is dropped, and every drop is counted.
A sink that fails or hangs only ever delays its own queue.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Sequence

from prometheus_client import Counter, Gauge

from labgate.events import CONTROL_CHARS, Event
from labgate.workers.sinks.base import DeliveryError, Sink

log = logging.getLogger("labgate.events")

EVENTS = Counter("labgate_events_total", "Events published", ["kind"])
SINK_DELIVERED = Counter("labgate_sink_delivered_total", "Events a sink delivered", ["sink"])
SINK_DROPPED = Counter("labgate_sink_dropped_total", "Events a sink dropped (buffer full, or left at stop)", ["sink"])
SINK_RETRIES = Counter("labgate_sink_retries_total", "Failed delivery attempts (each one is retried)", ["sink"])
SINK_QUEUE = Gauge("labgate_sink_queue", "Events waiting in a sink's buffer", ["sink"])


@dataclass(frozen=True)
class SinkStats:
    """One sink's counters and state as EventBus.stats() reports them."""

    name: str
    type: str
    queued: int
    capacity: int
    delivered: int
    dropped: int
    retries: int
    last_error: str | None
    last_error_at: float | None  # Unix time
    connected: bool


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, DeliveryError) and type(exc).__name__ not in text:
        text = f"{type(exc).__name__}: {text}"
    return CONTROL_CHARS.sub(" ", text)[:300]


class _Channel:
    """One sink's buffer and worker thread.

    The batch being sent stays at the head of the queue until its outcome is known, so the buffer bounds
    everything held for the sink. If publish evicts events of that batch meanwhile (buffer full), they count as
    delivered if the send succeeded and as dropped otherwise: the counters are exact."""

    def __init__(self, sink: Sink, warn_interval: float) -> None:
        self.sink = sink
        self.name = sink.name
        policy = sink.policy
        self.capacity = policy.buffer
        self.max_batch = policy.max_batch
        self.retry_initial = policy.retry_initial
        self.retry_max = max(policy.retry_max, policy.retry_initial)
        self.kinds = policy.kinds
        self.warn_interval = warn_interval
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Event] = deque()
        self._inflight = 0  # events of the batch being sent that are still at the head of the queue
        self._evicted = 0  # events of that batch evicted by publish during the send
        self.delivered = 0
        self.dropped = 0
        self.retries = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._failing_since: float | None = None
        self._failed_attempts = 0
        self._last_failure_log = 0.0
        self._unlogged_drops = 0
        self._last_drop_log = float("-inf")
        self._stop_at: float | None = None  # monotonic deadline, set by stop()
        self._abandoned = False
        self._finished = False  # _finish() has counted what was left; the thread is only closing the sink
        self.unflushed = 0  # events still queued when the worker ended (counted as dropped)
        self.thread: threading.Thread | None = None
        self._m_delivered = SINK_DELIVERED.labels(self.name)
        self._m_dropped = SINK_DROPPED.labels(self.name)
        self._m_retries = SINK_RETRIES.labels(self.name)
        self._m_queue = SINK_QUEUE.labels(self.name)
        self._m_queue.set(0)

    # --- publish side (caller holds no lock of ours; never blocks on the sink) -----------------------------------
    def offer(self, event: Event) -> None:
        with self._cond:
            if len(self._queue) >= self.capacity:
                self._queue.popleft()
                if self._inflight:
                    self._inflight -= 1
                    self._evicted += 1
                else:
                    self._count_drops(1)
            self._queue.append(event)
            self._m_queue.set(len(self._queue))
            self._cond.notify()

    def _count_drops(self, n: int, *, overflow: bool = True) -> None:
        if n > 0:
            self.dropped += n
            self._m_dropped.inc(n)
            if overflow:
                self._unlogged_drops += n

    # --- worker side ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self.thread.start()

    def _next_batch(self) -> list[Event] | None:
        """The events to send next; [] after an idle wait (time to log), None when the worker must end."""
        with self._cond:
            if not self._queue and self._stop_at is None:
                self._cond.wait(timeout=max(self.warn_interval, 0.05))
            if self._abandoned or (self._stop_at is not None
                                   and (not self._queue or time.monotonic() >= self._stop_at)):
                return None
            if not self._queue:
                return []
            batch = list(islice(self._queue, self.max_batch))
            self._inflight = len(batch)
            self._evicted = 0
            return batch

    def _settle(self, sent: int, error: str | None) -> bool:
        """Account for an attempt that delivered the first `sent` events of the batch; False if abandoned."""
        with self._cond:
            if self._abandoned:
                return False
            evicted_sent = min(self._evicted, sent)
            self._count_drops(self._evicted - evicted_sent)
            for _ in range(max(0, sent - self._evicted)):
                self._queue.popleft()
            self._inflight = 0
            self._evicted = 0
            self.delivered += sent
            self._m_delivered.inc(sent)
            self._m_queue.set(len(self._queue))
            if error is not None:
                self.retries += 1
                self.last_error = error
                self.last_error_at = time.time()
                self._m_retries.inc()
            return True

    def _sleep(self, seconds: float) -> bool:
        """Back off; False when the worker must end instead: abandoned, or stop() was called and its deadline
        comes before the retry would (stop() wakes us to recompute), so no retry is left to wait for."""
        end = time.monotonic() + seconds
        with self._cond:
            while not self._abandoned:
                if self._stop_at is not None and end >= self._stop_at:
                    return False
                now = time.monotonic()
                if now >= end:
                    return True
                self._cond.wait(end - now)
            return False

    def _log_drops(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._unlogged_drops and (force or now - self._last_drop_log >= self.warn_interval):
            with self._cond:
                n, self._unlogged_drops = self._unlogged_drops, 0
                total, queued = self.dropped, len(self._queue)
            self._last_drop_log = now
            log.warning("event=sink_dropped sink=%s dropped=%d dropped_total=%d queued=%d buffer=%d",
                        self.name, n, total, queued, self.capacity)

    def _log_outcome(self, error: str | None) -> None:
        now = time.monotonic()
        if error is None:
            if self._failing_since is not None:
                log.info("event=sink_recovered sink=%s failed_attempts=%d seconds_down=%.1f",
                         self.name, self._failed_attempts, now - self._failing_since)
            self._failing_since = None
            self._failed_attempts = 0
            return
        self._failed_attempts += 1
        if self._failing_since is None:
            self._failing_since = now
            self._last_failure_log = now
            log.warning("event=sink_failed sink=%s type=%s error=%r queued=%d", self.name, self.sink.type, error,
                        len(self._queue))
        elif now - self._last_failure_log >= self.warn_interval:
            self._last_failure_log = now
            log.warning("event=sink_still_failing sink=%s attempts=%d seconds_down=%.0f error=%r queued=%d",
                        self.name, self._failed_attempts, now - self._failing_since, error, len(self._queue))

    def _run(self) -> None:
        delay = self.retry_initial
        while True:
            try:
                batch = self._next_batch()
                self._log_drops()
                if batch is None:
                    break
                if not batch:
                    continue
                try:
                    self.sink.send(batch)
                    sent, error = len(batch), None
                except Exception as exc:  # noqa: BLE001 - any sink failure means "retry later"
                    sent = min(max(int(getattr(exc, "delivered", 0) or 0), 0), len(batch))
                    error = _error_text(exc)
                if not self._settle(sent, error):
                    break
                self._log_outcome(error)
                if error is None:
                    delay = self.retry_initial
                else:
                    # Equal jitter: half the delay fixed, half random, so many gateways do not retry in step.
                    if not self._sleep(delay / 2 + random.uniform(0, delay / 2)):
                        break
                    delay = min(delay * 2, self.retry_max)
            except Exception:  # noqa: BLE001 - a bug here must not end delivery for good
                log.exception("event=sink_worker_error sink=%s", self.name)
                if not self._sleep(delay):
                    break
        self._finish()

    def _finish(self) -> None:
        """The worker ends (stop): what is still queued is lost with the process, so it is counted as dropped."""
        with self._cond:
            if self._abandoned:
                return
            self._finished = True
            left = len(self._queue)
            self._queue.clear()
            self._count_drops(left, overflow=False)
            self.unflushed = left
            self._m_queue.set(0)
        if left:
            log.warning("event=sink_unflushed sink=%s dropped=%d", self.name, left)
        self._log_drops(force=True)
        try:
            self.sink.close()
        except Exception:  # noqa: BLE001 - closing must not raise at shutdown
            log.debug("event=sink_close_failed sink=%s", self.name, exc_info=True)

    # --- stop side --------------------------------------------------------------------------------------------------
    def request_stop(self, deadline: float) -> None:
        with self._cond:
            self._stop_at = deadline
            self._cond.notify_all()

    def abandon(self) -> int:
        """The worker is stuck past the deadline: count what it holds as dropped and unblock its transport.

        A worker that already counted what was left (it is only closing its sink) is not stuck: nothing to do."""
        with self._cond:
            if self._finished:
                return 0
            # The batch in the stuck send is still queued; events evicted from it were not counted yet.
            left = len(self._queue) + self._evicted
            self._queue.clear()
            self._inflight = self._evicted = 0
            self._count_drops(left, overflow=False)
            self.unflushed = left
            self._abandoned = True
            self._m_queue.set(0)
            self._cond.notify_all()
        log.warning("event=sink_unflushed sink=%s dropped=%d reason=stuck", self.name, left)
        try:
            self.sink.abort()
        except Exception:  # noqa: BLE001
            log.debug("event=sink_abort_failed sink=%s", self.name, exc_info=True)
        return left

    def stats(self) -> SinkStats:
        with self._cond:
            queued = len(self._queue)
            delivered, dropped, retries = self.delivered, self.dropped, self.retries
            last_error, last_error_at = self.last_error, self.last_error_at
        try:
            connected = bool(self.sink.connected)
        except Exception:  # noqa: BLE001
            connected = False
        return SinkStats(self.name, self.sink.type, queued, self.capacity, delivered, dropped, retries, last_error,
                         last_error_at, connected)


class EventBus:
    """Stamps each published event with the next `seq`, keeps the last `recent_size` in memory, and hands it to
    every sink that wants its kind.

    `first_seq` defaults to the current Unix time in microseconds, so seq keeps increasing across restarts (at
    fewer than a million events per second) and a client polling recent(since_seq=...) never sees it go back."""

    def __init__(self, sinks: Sequence[Sink] = (), *, recent_size: int = 10_000, first_seq: int | None = None,
                 warn_interval: float = 60.0) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique: {names}")
        self._lock = threading.Lock()
        self._recent: deque[Event] = deque(maxlen=recent_size)
        self._next_seq = first_seq if first_seq is not None else time.time_ns() // 1000
        self._channels = [_Channel(s, warn_interval) for s in sinks]
        self._started = False
        self._stopped = False

    @property
    def sink_names(self) -> list[str]:
        return [c.name for c in self._channels]

    def publish(self, event: Event) -> Event | None:
        """Record `event` and queue it for the sinks; returns it stamped with its seq (any seq given is replaced).

        Never blocks on a sink and never raises: a wrong argument is logged and None returned. After stop() the
        event still reaches recent() but no sink."""
        try:
            with self._lock:
                stamped = event.stamped(self._next_seq)
                self._next_seq += 1
                self._recent.append(stamped)
                EVENTS.labels(stamped.kind).inc()
                # Queued under the bus lock, so every sink sees events in seq order.
                if not self._stopped:
                    for channel in self._channels:
                        if channel.kinds is None or stamped.kind in channel.kinds:
                            channel.offer(stamped)
            return stamped
        except Exception:  # noqa: BLE001 - publishing is best effort by contract
            log.error("event=publish_failed argument=%s", type(event).__name__, exc_info=True)
            return None

    def recent(self, kind: str | None = None, gateway: str | None = None, owner: str | None = None,
               forward_id: int | None = None, since_seq: int | None = None, limit: int = 100) -> list[Event]:
        """Events still in memory that match every given filter, in seq order.

        Without since_seq: the newest `limit` matches. With since_seq: the oldest `limit` matches after it, so a
        poller passing the last seq it saw pages forward without gaps."""
        with self._lock:
            events = list(self._recent)
        if limit <= 0:
            return []

        def wanted(e: Event) -> bool:
            f = e.fields
            return ((kind is None or e.kind == kind)
                    and (gateway is None or f.get("gateway") == gateway)
                    and (owner is None or f.get("owner") == owner)
                    and (forward_id is None or f.get("forward_id") == forward_id)
                    and (since_seq is None or e.seq > since_seq))

        if since_seq is not None:
            return list(islice((e for e in events if wanted(e)), limit))
        return list(islice((e for e in reversed(events) if wanted(e)), limit))[::-1]

    def stats(self) -> dict[str, SinkStats]:
        """Per sink: queued, delivered, dropped, retries, last_error, connected (a consistent snapshot per sink)."""
        return {c.name: c.stats() for c in self._channels}

    def start(self) -> None:
        """Start one delivery thread per sink. Events published before start() wait in the buffers."""
        with self._lock:
            if self._started:
                return
            self._started = True
        for channel in self._channels:
            channel.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Deliver what can be delivered within `timeout` seconds, then close the sinks; True if nothing was left.

        Returns within about `timeout` even if a sink hangs: its thread is abandoned (daemon) and its transport
        aborted. Whatever was not delivered is counted as dropped and logged."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            self._stopped = True
        for channel in self._channels:
            channel.request_stop(deadline)
        for channel in self._channels:
            if channel.thread is None:  # never started: nothing will deliver its buffer
                channel._finish()
                continue
            channel.thread.join(max(0.0, deadline - time.monotonic()))
            if channel.thread.is_alive():
                channel.abandon()
        return not any(c.unflushed for c in self._channels)
