"""Loops that talk to Redis and must outlive its outages: one backoff rule for all of them.

A connection-level failure (``TRANSIENT_ERRORS``) is logged and retried after a wait that doubles
with each consecutive failure (50 ms .. 5 s); the first success resets it. Anything else is a
bug or a refusal and propagates to the loop's owner.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import anyio

from earnorm.events._broker import TRANSIENT_ERRORS

log = logging.getLogger("earnorm.consumer")
T = TypeVar("T")

_FIRST_WAIT = 0.05
_MAX_WAIT = 5.0


class Backoff:
    """The wait before the next try of one operation, growing with consecutive failures.

    >>> b = Backoff("fetch")
    >>> [b.next_wait() for _ in range(3)], b.failures
    ([0.1, 0.2, 0.4], 3)
    >>> b.reset(); b.failures
    0
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0

    def next_wait(self) -> float:
        self.failures += 1
        return float(min(_FIRST_WAIT * 2 ** min(self.failures, 8), _MAX_WAIT))

    def reset(self) -> None:
        self.failures = 0

    async def wait(self, exc: BaseException) -> None:
        """Log the failure and sleep before the next try."""
        wait = self.next_wait()
        log.warning("%s: Redis unavailable (%s: %s); retrying in %.2fs",
                    self.what, type(exc).__name__, exc, wait)
        await anyio.sleep(wait)


async def until_done(what: str, operation: Callable[[], Awaitable[T]]) -> T:
    """``await operation()`` until it gets through Redis's outages; returns its result."""
    backoff = Backoff(what)
    while True:
        try:
            return await operation()
        except TRANSIENT_ERRORS as exc:
            await backoff.wait(exc)


async def forever(what: str, step: Callable[[], Awaitable[float]]) -> NoReturn:
    """Run ``step()`` again and again, sleeping the seconds it returns between runs; Redis
    outages back off (``Backoff``). Ends only by cancellation."""
    backoff = Backoff(what)
    while True:
        try:
            pause = await step()
        except TRANSIENT_ERRORS as exc:
            await backoff.wait(exc)
            continue
        backoff.reset()
        if pause > 0:
            await anyio.sleep(pause)
