"""The consumer's scheduler: fires the periodic schedules it was given, each tick once across
every consumer running them.

Every consumer wakes at the next tick of its schedules (at most every second), reads each
schedule's last handled tick from Redis and, for a schedule whose latest tick is newer, pushes
the tick's event in the same script that moves the last tick forward if nobody else did
(``ScheduleStore.advance``). Of several consumers, one wins each tick; the others see the new
last tick. State lives in Redis, so restarts change nothing, and the event id is the same in
every consumer (derived from queue, schedule and tick): a handler can always tell a repeat.

Missed ticks (no consumer running at the time, or one reaching a tick later than its grace):
with ``missed="skip"`` they are dropped (logged); with ``"catch_up"`` one event is fired for
the whole missed window, its metadata saying how many ticks and which span. A schedule seen for
the first time starts from now: no history, nothing to catch up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from earnorm._config import EventConfig
from earnorm.events._broker.broker import Broker
from earnorm.events._broker.errors import RETRYABLE_ERRORS
from earnorm.events._broker.schedule_store import ScheduleStore
from earnorm.events._periodic import Schedule
from earnorm.events._wire import encode
from earnorm.events._wire.clock import ServerClock, iso_ms
from earnorm.events._wire.event import Event
from earnorm.events.consumer._resilient import Backoff, RedisHealth

log = logging.getLogger("earnorm.scheduler")

_MAX_SLEEP = 1.0


class Scheduler:
    def __init__(self, broker: Broker, schedules: Sequence[Schedule], config: EventConfig,
                 clock: ServerClock, health: RedisHealth,
                 on_ticks: Callable[[str, str, int], None] | None = None) -> None:
        self.broker = broker
        self._on_ticks = on_ticks  # (schedule, outcome, count): the metrics' counter
        self.schedules = list(schedules)
        self.config = config
        self.clock = clock
        self.health = health
        self.store = ScheduleStore(broker.redis, broker.keys)
        self.fired = 0
        self.skipped = 0

    async def run(self) -> None:
        backoff = Backoff("scheduler", self.health)
        while True:
            try:
                wait = await self.once()
                backoff.reset()
            except RETRYABLE_ERRORS as exc:
                await backoff.wait(exc)
                continue
            await anyio.sleep(wait)

    async def once(self) -> float:
        """Fire what is due; seconds until the next tick (at most one)."""
        now = self.clock.now_ms()
        lasts = await self.store.lasts([s.name for s in self.schedules])
        soonest = now + _MAX_SLEEP * 1000
        for schedule in self.schedules:
            nxt = schedule.next_after(now)
            soonest = min(soonest, nxt)
            await self._consider(schedule, lasts[schedule.name], now, nxt)
        return max(0.005, (soonest - self.clock.now_ms()) / 1000 + 0.002)

    async def _consider(self, schedule: Schedule, last: str | None, now: float,
                        nxt: float) -> None:
        tick = schedule.latest_at(now)
        if last is not None and int(float(last)) >= int(tick):
            return
        on_time = now - tick <= schedule.grace_ms
        missed = 0 if last is None else (
            schedule.ticks_between(float(last), tick) + (0 if on_time else 1))
        queue = self.config.queue_name
        envelopes: list[bytes] = []
        if on_time:
            envelopes.append(self._envelope(schedule, schedule.event_id(queue, tick), {
                "schedule": schedule.name, "tick": iso_ms(tick)}))
        if missed and schedule.missed == "catch_up" and last is not None:
            envelopes.append(self._envelope(schedule, schedule.event_id(
                queue, tick, f"catch_up:{last}"), {
                "schedule": schedule.name, "catch_up": True, "missed": missed,
                "from": iso_ms(float(last)), "to": iso_ms(tick)}))
        info = {"schedule": schedule.describe(), "missed_policy": schedule.missed,
                "last_tick_ms": tick, "last_tick_fired": on_time, "missed": missed,
                "next_ms": nxt, "updated_ms": now}
        ready = self.broker.keys.ready[self.broker.keys.ready_index(schedule.priority)]
        if not await self.store.advance(schedule.name, last, tick, info, envelopes, ready):
            return  # another consumer handled this tick
        self.fired += len(envelopes)
        if on_time:
            self._report(schedule.name, "fired", 1)
        if missed and schedule.missed == "skip":
            self.skipped += missed
            self._report(schedule.name, "skipped", missed)
            log.warning("schedule %s: %d tick(s) missed while no consumer ran them, skipped "
                        "(missed='skip'); up to %s", schedule.name, missed, iso_ms(tick))
        elif missed:
            self._report(schedule.name, "caught_up", missed)
            log.info("schedule %s: one catch-up event for %d missed tick(s)", schedule.name,
                     missed)

    def _report(self, name: str, outcome: str, count: int) -> None:
        if self._on_ticks is not None:
            self._on_ticks(name, outcome, count)

    def _envelope(self, schedule: Schedule, event_id: str, metadata: dict[str, Any]) -> bytes:
        event = Event(name=schedule.name, data=dict(schedule.data), id=event_id,
                      metadata=metadata)
        return encode.encode_event(event, self.config.queue_name,
                                     serializer=self.config.serializer,
                                     compression=self.config.compression,
                                     priority=schedule.priority)
