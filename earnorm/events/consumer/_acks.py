"""Coalesced acks: handled fields are removed from the in-flight hash and counted as processed
in one script per round trip. A flush starts as soon as an ack is waiting, so what a crash can
re-run is what was running plus what finished during the last ack's round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from earnorm.events._broker.broker import Broker
from earnorm.events._broker.errors import RETRYABLE_ERRORS
from earnorm.events.consumer._resilient import Backoff, RedisHealth


class AckBatcher:
    def __init__(
        self, broker: Broker, consumer_id: str, on_acked: Callable[[list[int]], None],
        health: RedisHealth,
    ) -> None:
        self.broker = broker
        self.consumer_id = consumer_id
        self.health = health
        self._on_acked = on_acked
        self._pending: list[int] = []
        self._have_acks = asyncio.Event()

    def ack(self, field: int) -> None:
        self._pending.append(field)
        self._have_acks.set()

    async def flush(self) -> None:
        """Send every pending ack now (they are kept for the next try if Redis fails)."""
        if not self._pending:
            return
        fields, self._pending = self._pending, []
        try:
            await self.broker.ack(self.consumer_id, fields)
        except BaseException:
            self._pending[:0] = fields
            raise
        self._on_acked(fields)

    async def run(self) -> None:
        backoff = Backoff("ack", self.health)
        while True:
            await self._have_acks.wait()
            self._have_acks.clear()
            try:
                await self.flush()
                backoff.reset()
            except RETRYABLE_ERRORS as exc:
                self._have_acks.set()
                await backoff.wait(exc)
