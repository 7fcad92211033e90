"""Handlers for consumer subprocesses in the result-backend tests."""

from __future__ import annotations

from earnorm import Event, event_handler


@event_handler("results.add")
async def double(event: Event) -> int:
    return 2 * int((event.args or (0,))[0])
