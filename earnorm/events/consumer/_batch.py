"""Batch handlers (``@event_handler(..., batch_size=100, batch_timeout=1.0)``).

An event bound for a batch handler waits here, still un-acked in the consumer's in-flight hash,
until its batch is full or ``batch_timeout`` seconds have passed since the batch's first event;
a consumer killed meanwhile loses nothing, its in-flight messages are recovered. The consumer
settles an event only once every handler it was waiting for has run.

If the handler raises on a whole batch, it is called again once per event, so one bad event
cannot hold the others hostage: each event's outcome is its own and only the events that fail on
their own are retried (each through its normal retry schedule) or dead-lettered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from earnorm.events._handlers import Handler
from earnorm.events._wire.decode import Message
from earnorm.events._wire.event import Event
from earnorm.events._wire.failures import HandlerFailure
from earnorm.events.consumer._decide import Failures


@dataclass(eq=False, slots=True)
class PendingEvent:
    """An event waiting for its batch handler(s) before the consumer can settle it."""

    field: int
    raw: bytes
    message: Message
    event: Event
    failures: Failures  # from handlers that already ran
    waiting: int  # batch handlers still to run on it


@dataclass(eq=False, slots=True)
class _OpenBatch:
    handler: Handler
    deadline: float  # monotonic
    items: list[PendingEvent] = field(default_factory=list)


class Batches:
    """The open batch of each batch handler. Pure bookkeeping: the consumer runs them."""

    def __init__(self) -> None:
        self._open: dict[str, _OpenBatch] = {}
        self.changed = asyncio.Event()  # set when a batch opens: the flush timer re-plans

    def __len__(self) -> int:
        return sum(len(batch.items) for batch in self._open.values())

    def add(self, handler: Handler, item: PendingEvent) -> list[PendingEvent] | None:
        """Queue ``item`` for ``handler``; returns the batch, taken out, once it is full."""
        batch = self._open.get(handler.name)
        if batch is None:
            batch = self._open[handler.name] = _OpenBatch(
                handler, time.monotonic() + handler.batch_timeout
            )
            self.changed.set()
        batch.items.append(item)
        if len(batch.items) >= (handler.batch_size or 1):
            del self._open[handler.name]
            return batch.items
        return None

    def next_deadline(self) -> float | None:
        return min((b.deadline for b in self._open.values()), default=None)

    def take_due(self, now: float | None = None) -> list[tuple[Handler, list[PendingEvent]]]:
        now = time.monotonic() if now is None else now
        due = [name for name, batch in self._open.items() if batch.deadline <= now]
        return [(b.handler, b.items) for b in map(self._open.pop, due)]

    def take_all(self) -> list[tuple[Handler, list[PendingEvent]]]:
        batches = [(b.handler, b.items) for b in self._open.values()]
        self._open.clear()
        return batches


async def run_batch(
    handler: Handler, items: list[PendingEvent],
    call: Callable[[Handler, object], Awaitable[BaseException | None]],
) -> None:
    """Run ``handler`` on the batch; if it fails, once per event. Failures land on the items.

    ``call(handler, argument)`` runs the handler (with its timeout) and returns the error it
    raised, or None.
    """
    error = await call(handler, [item.event for item in items])
    if error is None:
        return
    if len(items) == 1:
        items[0].failures.append((handler, HandlerFailure(handler.name, error)))
        return
    for item in items:
        alone = await call(handler, [item.event])
        if alone is not None:
            item.failures.append((handler, HandlerFailure(handler.name, alone)))


async def flush_due_batches(batches: Batches,
                            start: Callable[[Handler, list[PendingEvent]], None]) -> None:
    """Forever: ``start`` each batch whose ``batch_timeout`` passed; full ones are run by the
    worker that filled them."""
    while True:
        deadline = batches.next_deadline()
        batches.changed.clear()
        if deadline is None:
            await batches.changed.wait()
            continue
        with anyio.move_on_after(deadline - time.monotonic()):
            await batches.changed.wait()  # a new batch may be due sooner
        for handler, items in batches.take_due():
            start(handler, items)
