"""The fetch loop and the buffer it fills: messages move from the ready lists into this
consumer's in-flight hash (atomic, in Redis), then wait here for a worker.

Field numbers of the in-flight hash are spent before each fetch: if a fetch's reply is lost, the
next one must not reuse (and overwrite) fields the script may already have written. Fields that
such a lost fetch wrote are found (``held`` says which ones we know) and handed back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import anyio

from earnorm.events._broker import TRANSIENT_ERRORS, Broker
from earnorm.events.consumer._resilient import Backoff

log = logging.getLogger("earnorm.consumer")

MAX_FETCH = 1000  # keeps Lua's unpack() well inside its stack limit


class Fetcher:
    """Keeps up to ``prefetch`` fetched messages ready for the workers."""

    def __init__(
        self, broker: Broker, consumer_id: str, prefetch: int, poll_interval: float,
        take_handled: Callable[[], int], give_back_handled: Callable[[int], None],
    ) -> None:
        self.broker = broker
        self.consumer_id = consumer_id
        self.prefetch = prefetch
        self.poll_interval = poll_interval
        self.buffer: deque[tuple[int, bytes]] = deque()
        self.held: set[int] = set()  # fields of our in-flight hash that we know about
        # The fetch script also adds what we handled since the last fetch to the counter.
        self._take_handled = take_handled
        self._give_back_handled = give_back_handled
        self._low_water = max(prefetch // 2, 1)
        self._seq = 0
        self._orphans_possible = False
        self._stopping = False
        self._have_work = asyncio.Event()
        self._have_room = asyncio.Event()
        self._scope: anyio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self.buffer)

    def stop(self) -> None:
        """No more fetching; workers waiting for work get ``None``."""
        self._stopping = True
        self._have_work.set()
        self._have_room.set()
        if self._scope is not None:
            self._scope.cancel()

    def wake_workers(self) -> None:
        self._have_work.set()

    async def take(self) -> tuple[int, bytes] | None:
        """The next fetched (field, envelope), or ``None`` once stopping."""
        buffer = self.buffer
        while not buffer or self._stopping:
            if self._stopping:
                return None
            self._have_work.clear()
            await self._have_work.wait()
        item = buffer.popleft()
        if len(buffer) < self._low_water:
            self._have_room.set()
        return item

    def put_back(self, field: int, raw: bytes) -> None:
        self.buffer.appendleft((field, raw))
        self._have_work.set()

    def forget(self, field: int) -> None:
        """``field`` was settled (acked, retried, dead-lettered, deferred)."""
        self.held.discard(field)

    async def run(self) -> None:
        """Fetch until ``stop()``."""
        broker = self.broker
        backoff = Backoff("fetch")
        while not self._stopping:
            room = self.prefetch - len(self.buffer)
            if room < self._low_water:
                self._have_room.clear()
                await self._have_room.wait()
                continue
            want = min(room, MAX_FETCH)
            first = self._seq + 1
            self._seq += want
            batch: list[bytes] = []
            handled = 0
            try:
                with anyio.CancelScope() as scope:
                    self._scope = scope
                    if self._stopping:
                        break
                    handled = self._take_handled()
                    batch = await broker.fetch(self.consumer_id, want, first - 1, handled)
                    handled = 0
                    if not batch:
                        await broker.wait_for_message(self.consumer_id, self.poll_interval)
                if scope.cancelled_caught:
                    break
                backoff.reset()
            except TRANSIENT_ERRORS as exc:
                self._orphans_possible = True
                await backoff.wait(exc)
                continue
            finally:
                self._scope = None
                if handled:
                    self._give_back_handled(handled)
            if self._orphans_possible:
                await self._reclaim_orphans()
            if batch:
                fields = range(first, first + len(batch))
                self.held.update(fields)
                self.buffer.extend(zip(fields, batch, strict=True))
                self._have_work.set()

    async def _reclaim_orphans(self) -> None:
        """After a fetch whose reply was lost, hand back what it moved but we never saw."""
        try:
            returned = await self.broker.reclaim(self.consumer_id, self.held)
        except TRANSIENT_ERRORS:
            return
        self._orphans_possible = False
        if returned:
            log.warning("returned %d message(s) fetched during a connection failure", returned)
