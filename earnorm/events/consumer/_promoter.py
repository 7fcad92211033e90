"""Moves due delayed messages (``Q:delayed``) to the ready lists. Any number of consumers may run
it at once: the move is one Lua script, so a message is promoted exactly once."""

from __future__ import annotations

from earnorm.events._broker import Broker
from earnorm.events.consumer._resilient import forever

_BATCH = 500


async def promote_due_forever(broker: Broker, interval: float) -> None:
    """Promote what is due, then sleep until the next due time (at most ``interval``)."""

    async def promote() -> float:
        moved, next_due, now = await broker.promote_due(_BATCH)
        if moved >= _BATCH:
            return 0.0  # more may be due already
        if next_due is None:
            return interval
        return min(max((next_due - now) / 1000, 0.0), interval)

    await forever("promote", promote)
