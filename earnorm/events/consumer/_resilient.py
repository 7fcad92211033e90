"""Loops that talk to Redis and must outlive its bad moments: one backoff rule for all of them,
and one log line per change of Redis's state as this consumer sees it.

Two kinds of bad moment are retried after a wait that doubles with each consecutive failure
(50 ms .. 5 s), reset by the first success:

- Redis unreachable (``TRANSIENT_ERRORS``): down, restarting, network;
- Redis refusing writes it may accept later (``REFUSED_ERRORS``): at ``maxmemory`` with
  ``noeviction``, or a replica during failover. This is back-pressure: the consumer keeps
  fetching and acking (allowed at the limit, and acking frees memory) while retries and
  dead-letters wait for room.

Anything else is a bug or a permanent refusal and propagates to the loop's owner.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import anyio

from earnorm.events._broker.errors import RETRYABLE_ERRORS, is_refused

log = logging.getLogger("earnorm.consumer")
T = TypeVar("T")

_FIRST_WAIT = 0.05
_MAX_WAIT = 5.0


class RedisHealth:
    """Redis's state as one consumer sees it: ``ok``, ``unreachable`` or ``refusing writes``.
    Logs a line when the state changes, not at every failed try.

    >>> health = RedisHealth()
    >>> health.state, health.failed("fetch", ConnectionError("down")), health.state
    ('ok', True, 'unreachable')
    >>> health.failed("ack", ConnectionError("down")), health.succeeded("fetch"), health.state
    (False, True, 'ok')
    """

    def __init__(self) -> None:
        self.state = "ok"
        self.since_failures = 0

    def failed(self, what: str, exc: BaseException) -> bool:
        """Record a failure; True if it changed the state (and was logged)."""
        state = "refusing writes" if is_refused(exc) else "unreachable"
        self.since_failures += 1
        if state == self.state:
            log.debug("%s: Redis still %s (%s: %s)", what, state, type(exc).__name__, exc)
            return False
        self.state = state
        if state == "refusing writes":
            log.warning("Redis is refusing writes (%s: %s); backing off: fetching and acking go "
                        "on, retries and dead-letters wait for room", type(exc).__name__, exc)
        else:
            log.warning("Redis is unreachable (%s: %s); retrying with backoff",
                        type(exc).__name__, exc)
        return True

    def succeeded(self, what: str) -> bool:
        """Record a success; True if it ended a bad state (and was logged)."""
        if self.state == "ok":
            return False
        log.warning("Redis is back (%s succeeded after %d failed tries)", what,
                    self.since_failures)
        self.state = "ok"
        self.since_failures = 0
        return True


class Backoff:
    """The wait before the next try of one operation, growing with consecutive failures.

    >>> b = Backoff("fetch")
    >>> [b.next_wait() for _ in range(3)], b.failures
    ([0.1, 0.2, 0.4], 3)
    >>> b.reset(); b.failures
    0
    """

    def __init__(self, what: str, health: RedisHealth | None = None) -> None:
        self.what = what
        self.failures = 0
        self.health = health or RedisHealth()

    def next_wait(self) -> float:
        self.failures += 1
        return float(min(_FIRST_WAIT * 2 ** min(self.failures, 8), _MAX_WAIT))

    def reset(self) -> None:
        if self.failures:
            self.health.succeeded(self.what)
        self.failures = 0

    async def wait(self, exc: BaseException) -> None:
        """Record the failure and sleep before the next try."""
        self.health.failed(self.what, exc)
        await anyio.sleep(self.next_wait())


async def until_done(
    what: str, operation: Callable[[], Awaitable[T]], health: RedisHealth | None = None,
    *, escape_refused: bool = False,
) -> T:
    """``await operation()`` until Redis takes it; returns its result. With
    ``escape_refused``, a refused write (``maxmemory``) is raised at once instead: the caller
    waits for room elsewhere."""
    backoff = Backoff(what, health)
    while True:
        try:
            result = await operation()
        except RETRYABLE_ERRORS as exc:
            if escape_refused and is_refused(exc):
                raise
            await backoff.wait(exc)
            continue
        backoff.reset()
        return result


async def forever(
    what: str, step: Callable[[], Awaitable[float]], health: RedisHealth | None = None
) -> NoReturn:
    """Run ``step()`` again and again, sleeping the seconds it returns between runs; Redis's
    bad moments back off (``Backoff``). Ends only by cancellation."""
    while True:
        pause = await until_done(what, step, health)
        if pause > 0:
            await anyio.sleep(pause)
