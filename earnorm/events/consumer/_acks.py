"""Coalesced acks: handled fields are removed from the in-flight hash in one HDEL per round
trip, and counted (the next fetch script adds them to the queue's ``processed`` counter)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from earnorm.events._broker import TRANSIENT_ERRORS, Broker
from earnorm.events.consumer._resilient import Backoff


class AckBatcher:
    def __init__(
        self, broker: Broker, consumer_id: str, on_acked: Callable[[list[int]], None]
    ) -> None:
        self.broker = broker
        self.consumer_id = consumer_id
        self._on_acked = on_acked
        self._pending: list[int] = []
        self._have_acks = asyncio.Event()
        self.unreported = 0  # acked, not yet added to the queue's processed counter

    def ack(self, field: int) -> None:
        self._pending.append(field)
        self._have_acks.set()

    def take_unreported(self) -> int:
        count, self.unreported = self.unreported, 0
        return count

    def give_back_unreported(self, count: int) -> None:
        self.unreported += count

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
        self.unreported += len(fields)  # only handled events are acked here

    async def run(self) -> None:
        backoff = Backoff("ack")
        while True:
            await self._have_acks.wait()
            self._have_acks.clear()
            try:
                await self.flush()
                backoff.reset()
            except TRANSIENT_ERRORS as exc:
                self._have_acks.set()
                await backoff.wait(exc)
