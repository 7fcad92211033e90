"""Per-key concurrency across the fleet: a handler with ``concurrency_key=`` and
``max_concurrent=N`` runs for at most N events of one key at once, whatever the number of
consumers and processes (``_broker.key_leases``).

An event takes a slot of its key before its handlers run and gives it back when they are done.
One that finds its key full leaves this consumer in the same script: it waits in the key's list
in Redis (never in memory: a crash loses nothing), and the release of a slot hands it to the
consuming end of the main ready list (a large one to ``Q:recovered``) with the slot kept for
it, so it runs next, an idle consumer wakes for it at once, and newcomers do not overtake it.
Other keys are not held back. The takes (and the gives) of events handled at once go to Redis
together, one pipeline of scripts per round trip (``_coalesce``). A slot is tied to its
consumer's heartbeat: a consumer killed while it held slots frees them once its heartbeat
deadline passes (the next acquire, release or sweep of that key drops them), and its events
come back through recovery as any others do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from earnorm.events._broker.broker import Broker
from earnorm.events._broker.key_leases import Acquired, limited
from earnorm.events._concurrency import KeyLimit, NoConcurrencyKey
from earnorm.events._handlers import Handler
from earnorm.events._wire import decode as protocol
from earnorm.events._wire.event import Event
from earnorm.events._wire.failures import FailureReason
from earnorm.events.consumer._coalesce import Coalesce
from earnorm.events.consumer._decide import DeadLetter
from earnorm.events.consumer._resilient import RedisHealth, until_done

log = logging.getLogger("earnorm.consumer")


@dataclass(frozen=True, slots=True)
class Lease:
    """A slot this consumer holds for one message: given back with ``KeyLimits.release``."""

    field: int
    name: str  # <max>:<key>
    most: int


class KeyLimits:
    def __init__(self, broker: Broker, consumer_id: str, health: RedisHealth,
                 forget: Callable[[int], None],
                 on_wait: Callable[[str], None] | None = None) -> None:
        self.leases = broker.leases
        self.consumer_id = consumer_id
        self.health = health
        self.forget = forget  # a message that waits is no longer this consumer's
        self.on_wait = on_wait  # told the event name of each wait (metrics)
        # event name -> (the handlers it was worked out for, its limit)
        self._limits: dict[str, tuple[tuple[Handler, ...], KeyLimit | None]] = {}
        self.waited = 0  # events this consumer sent to wait for a slot of their key
        # the takes and the gives of a burst of events each go in one round trip
        self._acquire = Coalesce(self._acquire_many)
        self._release = Coalesce(self._release_many)

    def limit(self, name: str, handlers: tuple[Handler, ...]) -> KeyLimit | None:
        """The key limit of events named ``name`` (the first handler's that declares one)."""
        known = self._limits.get(name)
        if known is not None and known[0] is handlers:
            return known[1]
        declared = [h for h in handlers if h.key_limit is not None]
        found = declared[0].key_limit if declared else None
        if any(h.key_limit != found for h in declared[1:]):
            log.warning("handlers of %r declare different concurrency limits; the first one "
                        "(%s, max_concurrent=%d, of %s) applies to the event", name,
                        found.described if found else None, found.max if found else 0,
                        declared[0].name)
        self._limits[name] = (handlers, found)
        return found

    async def acquire(self, field: int, message: protocol.Message, event: Event,
                      limit: KeyLimit) -> Lease | DeadLetter | None:
        """A slot of the event's key (run, then ``release``); None if the message now waits
        in Redis for one (or was recovered by another consumer meanwhile); a dead-letter if
        the event has no key."""
        try:
            key = limit.key_of(event)
        except NoConcurrencyKey as exc:
            return DeadLetter(FailureReason.NO_CONCURRENCY_KEY, str(exc))
        got = await self._acquire((field, limit.max, key, message.id))
        if got is Acquired.RUN:
            return Lease(field, limited(limit.max, key), limit.max)
        self.forget(field)
        if got is Acquired.WAITS:
            self.waited += 1
            if self.on_wait is not None:
                self.on_wait(message.task)
        return None

    async def release(self, lease: Lease) -> None:
        await self._release((lease.field, lease.name, lease.most))

    async def _acquire_many(self, asks: list[tuple[int, int, str, str]]) -> list[Acquired]:
        return await until_done("key limit", partial(
            self.leases.acquire_many, self.consumer_id, asks), self.health)

    async def _release_many(self, gives: list[tuple[int | None, str, int]]) -> list[int]:
        return await until_done("key limit", partial(
            self.leases.release_many, self.consumer_id, gives), self.health)

    async def sweep(self, now_ms: float, older_s: float) -> int:
        """Hand free slots to waiters of keys nobody released for ``older_s`` seconds."""
        return await self.leases.sweep(now_ms - older_s * 1000)
