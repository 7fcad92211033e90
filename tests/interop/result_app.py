"""Handlers for consumer subprocesses in the result-backend tests."""

from __future__ import annotations

from earnorm import Event, event_handler


@event_handler("results.add")
async def double(event: Event) -> int:
    return 2 * int((event.args or (0,))[0])


@event_handler("chord.body")
async def total(event: Event) -> int:
    """A chord's body: called with the list of the header's results."""
    (results, *_rest) = event.args or ([],)
    return sum(results)


@event_handler("chord.flaky")
async def flaky(event: Event) -> int:
    """A header part that fails for good on odd numbers."""
    value = int((event.args or (0,))[0])
    if value % 2:
        raise ValueError(f"odd {value}")
    return value
