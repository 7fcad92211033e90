"""Rate limits across the fleet: each event of a limited name reserves the next slot of its
limit in Redis (``Broker.rate_slot``, one script shared by every consumer of the queue); an
event whose slot is later than now waits for it in the delayed set, marked with the slot
(``encode_rate_slot``), and runs when it comes back without taking another one.

So the limit holds whatever the number of consumers and processes, nothing waits in a
process's memory (a crash loses nothing: the wait is a delayed-set entry written with the ack),
and events run in the order they reserved their slots. A slot reserved by a consumer that dies
before it writes the wait is left unused: the limit errs on the slow side, never over.

A limit comes from the handlers of the event name (``rate_limit=``; the lowest wins) and from
``event_config.rate_limits`` (per event name). Events of names without one pay one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from earnorm._config import EventConfig
from earnorm._rate import interval_us
from earnorm.events._broker.broker import Broker
from earnorm.events._handlers import Handler
from earnorm.events._wire import decode as protocol
from earnorm.events._wire.encode import encode_rate_slot
from earnorm.events.consumer._coalesce import Coalesce
from earnorm.events.consumer._decide import Defer
from earnorm.events.consumer._resilient import RedisHealth, until_done

# A slot this close is run now rather than bounced through the delayed set.
SLACK_US = 2_000


class RateLimits:
    def __init__(self, broker: Broker, config: EventConfig, health: RedisHealth,
                 on_wait: Callable[[str], None] | None = None) -> None:
        self.broker = broker
        self.on_wait = on_wait  # told the event name of each wait (metrics)
        self.health = health
        self.configured = dict(config.rate_limits)
        # event name -> (the handlers it was worked out for, interval in us or 0)
        self._intervals: dict[str, tuple[tuple[Handler, ...], int]] = {}
        self.waited = 0  # events this consumer sent to wait for their slot
        # event name -> its reservations: a burst's events reserve their slots in one script
        self._reserve: dict[str, Coalesce[int, tuple[int, int]]] = {}

    def _reserver(self, name: str) -> Coalesce[int, tuple[int, int]]:
        async def reserve(intervals: list[int]) -> list[tuple[int, int]]:
            interval = intervals[0]  # one limit per event name
            first, now = await until_done("rate limit", partial(
                self.broker.rate_slot, name, interval, len(intervals)), self.health)
            return [(first + i * interval, now) for i in range(len(intervals))]
        self._reserve[name] = reserver = Coalesce(reserve)
        return reserver

    def interval(self, name: str, handlers: tuple[Handler, ...]) -> int:
        """Microseconds between two events of ``name`` (0: not limited)."""
        known = self._intervals.get(name)
        if known is not None and known[0] is handlers:
            return known[1]
        rates = [h.rate_limit for h in handlers if h.rate_limit is not None]
        if name in self.configured:
            rates.append(self.configured[name])
        interval = interval_us(min(rates)) if rates else 0
        self._intervals[name] = (handlers, interval)
        return interval

    async def wait(self, message: protocol.Message, interval: int) -> Defer | None:
        """None if ``message`` may run now (its slot is now, or it already had one), else the
        wait for the slot reserved for it."""
        if protocol.H_RATE_SLOT in message.headers:
            return None
        name = message.task
        reserve = self._reserve.get(name) or self._reserver(name)
        slot, now = await reserve(interval)
        if slot - now <= SLACK_US:
            return None
        self.waited += 1
        if self.on_wait is not None:
            self.on_wait(name)
        return Defer(slot / 1000, self.broker.keys.ready_index(message.priority),
                     encode_rate_slot(message, slot))
