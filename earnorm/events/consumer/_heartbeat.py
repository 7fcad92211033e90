"""Liveness: extend this consumer's deadline, hand back the work of consumers past theirs, and
publish this consumer's summary for ``stats()``. Also keeps the clock in step with Redis's,
watches the server (``_server_watch``), and restores Celery's expired ``unacked`` entries."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import anyio

from earnorm._config import EventConfig
from earnorm.events._broker.broker import Broker
from earnorm.events._broker.errors import REFUSED_ERRORS
from earnorm.events._wire.clock import ServerClock
from earnorm.events.consumer._resilient import RedisHealth, forever
from earnorm.events.consumer._server_watch import ServerWatch

log = logging.getLogger("earnorm.consumer")


class Heartbeat:
    def __init__(
        self, broker: Broker, consumer_id: str, config: EventConfig, clock: ServerClock,
        summary: Callable[[float], bytes], health: RedisHealth,
        on_recovered: Callable[[int], None] | None = None,
    ) -> None:
        self.broker = broker
        self.consumer_id = consumer_id
        self.config = config
        self.clock = clock
        self.health = health
        self.watch = ServerWatch(broker, config, clock)
        self._summary = summary
        self._on_recovered = on_recovered

    async def once(self) -> None:
        broker = self.broker
        sent = time.time()
        now_ms, dead = await broker.heartbeat(
            self.consumer_id, int(self.config.heartbeat_timeout * 1000)
        )
        self.clock.observe(now_ms, sent, time.time(), resolution_ms=1.0)  # whole ms
        # A full Redis refuses the summary (for stats() only); the deadline above is what counts.
        with contextlib.suppress(*REFUSED_ERRORS):
            await broker.publish_summary(self.consumer_id, self._summary(now_ms))
        for other in dead:
            if other == self.consumer_id:
                log.warning("this consumer missed its heartbeat deadline; its in-flight "
                            "messages may be delivered again")
                continue
            moved = await broker.recover(other)
            if moved >= 0:
                log.warning("recovered %d message(s) from dead consumer %s", moved, other)
                if moved and self._on_recovered is not None:
                    self._on_recovered(moved)
        # Keys whose waiters nobody released lately (their slot holders died, or a release was
        # lost with its consumer): hand them the free slots.
        released = await broker.leases.sweep(now_ms - self.config.heartbeat_interval * 1000)
        if released:
            log.info("released %d event(s) waiting for a concurrency key's slot", released)
        restored = await broker.celery.restore_expired(now_ms / 1000)
        if restored:
            log.warning("restored %d message(s) from Celery's unacked store, older than the "
                        "visibility timeout (%gs): their Celery worker is gone", restored,
                        self.config.celery_visibility_timeout)

    async def run(self) -> None:
        interval = self.config.heartbeat_interval

        async def beat() -> float:
            await self.once()
            await self.watch.check()
            return interval

        await anyio.sleep(interval)
        await forever("heartbeat", beat, self.health)
