"""What every sink is to the EventBus: a `Sink` that sends one batch in order and raises `DeliveryError` when it
cannot, and the `DeliveryPolicy` the bus feeds it with.

A sink only knows how to send one batch, in order, and raises when it cannot (DeliveryError(delivered=k) when the
first k arrived). Buffering, retries, backoff and counting belong to the bus (workers/events.py), so every
transport gets the same guarantees. Each sink is used by one thread only, except abort(), which may come from
stop().
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from labgate.events import Event


@dataclass(frozen=True)
class DeliveryPolicy:
    """How the bus feeds one sink: buffer size, batch size, retry backoff, and which kinds it wants (None = all)."""

    buffer: int = 10_000
    max_batch: int = 100
    retry_initial: float = 0.5
    retry_max: float = 30.0
    kinds: frozenset[str] | None = None


class DeliveryError(Exception):
    """A sink could not deliver a batch; `delivered` events at its start did arrive (they are not sent again).

    Sinks may raise any exception: the bus treats it as DeliveryError(delivered=0) and retries the whole batch.
    The message is logged and shown in stats(), so it must never contain a secret or an event's payload."""

    def __init__(self, message: str, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


class Sink:
    """A destination for events. Subclasses implement send(); the bus calls it from one thread."""

    type: ClassVar[str] = "sink"

    def __init__(self, name: str, policy: DeliveryPolicy | None = None) -> None:
        self.name = name
        self.policy = policy or DeliveryPolicy()

    @property
    def connected(self) -> bool:
        """Whether the destination looked reachable at the last attempt (a stream: the connection is open)."""
        return False

    def send(self, events: Sequence[Event]) -> None:
        """Deliver `events` in order; raise (ideally DeliveryError with `delivered`) if not all of them arrived."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the connection or file; the next send() opens it again."""

    def abort(self) -> None:
        """Called from another thread when send() is stuck past stop()'s deadline: unblock it if possible."""
        self.close()
