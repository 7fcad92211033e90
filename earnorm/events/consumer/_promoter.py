"""Moves due delayed messages (``Q:delayed``) to the ready lists. Any number of consumers may run
it at once: the move is one Lua script, so a message is promoted exactly once."""

from __future__ import annotations

from earnorm.events._broker.broker import Broker
from earnorm.events.consumer._resilient import forever

_BATCH = 500
# The event loop's timers wake up to 1 ms late (epoll waits whole milliseconds, rounded up):
# the promoter wakes this much before a due time and asks again, a round trip at a time.
EARLY_S = 0.001


async def promote_due_forever(broker: Broker, interval: float) -> None:
    """Promote what is due, then sleep until just before the next due time (at most
    ``interval``); within ``EARLY_S`` of it, ask again right away."""

    async def promote() -> float:
        moved, next_due, now = await broker.promote_due(_BATCH)
        if moved >= _BATCH:
            return 0.0  # more may be due already
        if next_due is None:
            return interval
        return min(max((next_due - now) / 1000 - EARLY_S, 0.0), interval)

    await forever("promote", promote)
