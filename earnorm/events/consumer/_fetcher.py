"""The fetch loop and the buffer it fills: messages move from the ready lists into this
consumer's in-flight hash (atomic, in Redis), then wait here for a worker.

Field numbers of the in-flight hash are spent before each fetch: if a fetch's reply is lost, the
next one must not reuse (and overwrite) fields the script may already have written. Fields that
such a lost fetch wrote are found (``held`` says which ones we know) and handed back.

What is held (fetched and not yet settled) is bounded by count (``prefetch``) and by memory
(``max_inflight_bytes``). A held message is counted at ``MEMORY_PER_WIRE_BYTE`` times its size
on the wire: while it runs, the process has the envelope as received (kept for settling), the
decoded envelope and the event's data (measured: 8 MB messages took ~3x in RSS). No fetch is
sent while the held messages' memory reaches the budget, and each fetch asks for no more than
what is left of it (one message more at most, and at least one when nothing is held, so a
message larger than the budget still moves). So a consumer's messages take about the budget
plus one message, whatever they weigh.

A fetch whose reply does not arrive within the read timeout is not simply sent again (its
messages would go back and forth without ever running): the consumer logs once, with the
cause, that its fetches make no progress, backs off, and asks for half as much each time (down
to one message) until a fetch gets through. The read timeout itself is never shorter than the
largest reply (``connect.fit_read_timeout``), so this is for a link slower than planned.

Recovered messages (taken back from a consumer that died holding them) come first. One held at
``ALONE_AT`` or more deaths is fetched alone into an empty buffer, and nothing else is fetched
until it is settled: the consumer runs it alone, so a message that kills its process again takes
no other message's delivery count up with it (see ``_scripts.FETCH``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from itertools import repeat

import anyio
from redis.exceptions import TimeoutError as RedisTimeoutError

from earnorm.events._broker.broker import FETCH_CAP_BYTES, Broker, Fetched, Redelivery
from earnorm.events._broker.errors import RETRYABLE_ERRORS
from earnorm.events.consumer._resilient import Backoff, RedisHealth

log = logging.getLogger("earnorm.consumer")

MAX_FETCH = 1000  # keeps Lua's unpack() well inside its stack limit
# A message held at this many consumer deaths (deliveries) runs alone. One death may be bad luck
# (a deploy, the OOM killer, a neighbour's poison message): those come back at full speed.
ALONE_AT = 3
# Memory a consumer's held messages take at most (plus one message), by default: sized for a
# small container (64 MiB of messages beside a ~40 MB process).
MAX_INFLIGHT_BYTES = 64 * 1024 * 1024
MEMORY_PER_WIRE_BYTE = 3

Item = tuple[int, bytes, Redelivery | None]


class Fetcher:
    """Keeps up to ``prefetch`` fetched messages ready for the workers."""

    def __init__(
        self, broker: Broker, consumer_id: str, prefetch: int, poll_interval: float,
        max_bytes: int, health: RedisHealth, max_deliveries: int = 5,
        max_inflight_bytes: int = MAX_INFLIGHT_BYTES,
        on_diverted: Callable[[list[str]], Awaitable[None]] | None = None,
        budget: int | None = None,
    ) -> None:
        self.broker = broker
        self.consumer_id = consumer_id
        self.prefetch = prefetch
        self.poll_interval = poll_interval
        self.max_bytes = max_bytes
        self.max_inflight_bytes = max_inflight_bytes
        self.health = health
        self._on_diverted = on_diverted  # told the ids of messages diverted as too large
        # With a strict limit the isolation starts sooner, so innocents stay under it.
        self.alone_at = min(ALONE_AT, max(max_deliveries, 2))
        self.buffer: deque[Item] = deque()
        # Fields of our in-flight hash that we know about, and each one's size.
        self.held: dict[int, int] = {}
        self.held_bytes = 0
        self.largest = 0  # the largest message fetched so far, in bytes
        self._bytes_freed = asyncio.Event()
        self._low_water = max(prefetch // 2, 1)
        self._seq = 0
        self._orphans_possible = False
        self._stopping = False
        # Workers waiting in take(), oldest first. Each fetched message wakes one of them:
        # one event for all woke every idle worker for every message (100 task switches for
        # one message on an idle queue, ahead of the next fetch).
        self._idle: deque[asyncio.Future[None]] = deque()
        self._have_room = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._redelivery_done = asyncio.Event()
        self._redelivery_done.set()
        self._scope: anyio.CancelScope | None = None
        self.last_progress = time.monotonic()  # the last fetch that got through (readyz)
        self.timed_out = 0  # fetches in a row whose reply did not arrive in time
        # Messages it may still fetch (``max_tasks``; None: no end). Spent, the fetch loop
        # ends on its own and the workers run what is buffered, then get ``None``: a retiring
        # consumer hands nothing back.
        self.budget = budget
        self.spent = False

    def stop(self) -> None:
        """No more fetching; workers waiting for work get ``None``."""
        self._stopping = True
        self._wake(len(self._idle))
        self._have_room.set()
        self._bytes_freed.set()
        self._empty.set()
        self._redelivery_done.set()
        if self._scope is not None:
            self._scope.cancel()

    def retire(self) -> None:
        """Fetch nothing more (a memory limit reached): what is fetched runs, then the
        workers get ``None``. A fetch under way completes first."""
        self.budget = 0
        self._have_room.set()

    def wake_workers(self) -> None:
        self._wake(len(self._idle))

    def _wake(self, n: int) -> None:
        idle = self._idle
        while n > 0 and idle:
            waiter = idle.popleft()
            if not waiter.done():  # a cancelled worker's stays behind, done
                waiter.set_result(None)
                n -= 1

    async def take(self) -> Item | None:
        """The next fetched (field, envelope, redelivery), or ``None`` once stopping."""
        buffer = self.buffer
        woken = False
        while not buffer or self._stopping:
            if self._stopping or self.spent:
                return None
            waiter = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake(1)  # woken, then cancelled: the wake-up goes to another
                raise
            woken = True
        item = self.take_nowait()
        if woken and buffer and self._idle:
            self._wake(2)  # fan out: see _add_fields
        return item

    def take_nowait(self) -> Item | None:
        """The next buffered item, or ``None`` when ``take()`` would wait (or stopping): a busy
        worker's way to its next message without a coroutine per message."""
        buffer = self.buffer
        if not buffer or self._stopping:
            return None
        item = buffer.popleft()
        if len(buffer) < self._low_water:
            self._have_room.set()
            if not buffer:
                self._empty.set()
        return item

    def forget(self, field: int) -> None:
        """``field`` was settled (acked, retried, dead-lettered, deferred)."""
        self.forget_many((field,))

    def forget_many(self, fields: Iterable[int]) -> None:
        """``fields`` were settled (the acks of one round trip: C-level loops, hot path)."""
        freed = sum(map(self.held.pop, fields, repeat(0)))
        if freed:
            self.held_bytes -= freed
            if self.held_bytes * MEMORY_PER_WIRE_BYTE < self.max_inflight_bytes:
                self._bytes_freed.set()

    def redelivery_settled(self) -> None:
        """The recovered message being run alone is settled: fetching may go on."""
        self._redelivery_done.set()

    async def _wait(self, event: asyncio.Event) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            if not self._stopping:
                await event.wait()
        self._scope = None

    async def run(self) -> None:
        """Fetch until ``stop()``."""
        broker = self.broker
        backoff = Backoff("fetch", self.health)
        # The last fetch read every ready list to its end, just now: the next one goes
        # straight to the blocking wait (one round trip per message fewer on a quiet queue).
        # Any wait for room forgets it: lists other than the main one may have filled
        # meanwhile, and the blocking wait only wakes for the main one.
        drained = False
        while not self._stopping:
            if self.budget is not None and self.budget <= 0:
                self.spent = True
                self._wake(len(self._idle))  # idle workers get None; busy ones drain the rest
                return
            if not self._redelivery_done.is_set():
                drained = False
                await self._wait(self._redelivery_done)
                continue
            room = self.prefetch - len(self.buffer)
            if room < self._low_water:
                drained = False
                self._have_room.clear()
                await self._have_room.wait()
                continue
            left = self.max_inflight_bytes - self.held_bytes * MEMORY_PER_WIRE_BYTE
            if self.held and left <= 0:
                drained = False
                self._bytes_freed.clear()
                await self._wait(self._bytes_freed)
                continue
            cap = FETCH_CAP_BYTES if not self.held else min(
                FETCH_CAP_BYTES, left // MEMORY_PER_WIRE_BYTE)
            want = min(room, MAX_FETCH) if self.budget is None else min(room, MAX_FETCH,
                                                                         self.budget)
            if self.timed_out:  # ask for less until one gets through
                cap, want = cap >> self.timed_out, max(1, want >> self.timed_out)
            first = self._seq + 1
            self._seq += want
            fetched = None
            try:
                with anyio.CancelScope() as scope:
                    self._scope = scope
                    if self._stopping:
                        break
                    if not drained:
                        fetched = await broker.fetch(
                            self.consumer_id, want, first - 1, may_take_alone=not self.buffer,
                            max_bytes=self.max_bytes, alone_at=self.alone_at, cap_bytes=cap,
                        )
                        drained = not fetched.messages and not fetched.recovered_waiting
                        if drained:
                            await self._report_diverted(fetched)  # the wait's replaces it
                    if drained:
                        # Nothing took those field numbers: the wait's fetch reuses them.
                        fetched = await broker.wait_and_fetch(
                            self.consumer_id, self.poll_interval, want, first - 1,
                            may_take_alone=not self.buffer, max_bytes=self.max_bytes,
                            alone_at=self.alone_at, cap_bytes=cap,
                        )
                if scope.cancelled_caught:
                    break
                backoff.reset()
                self.last_progress = time.monotonic()
                if self.timed_out:
                    log.warning("fetching makes progress again (after %d timed-out fetches)",
                                self.timed_out)
                    self.timed_out = 0
            except (RedisTimeoutError, TimeoutError) as exc:
                drained = False
                self._orphans_possible = True
                self._timed_out(exc, want, cap)
                await anyio.sleep(backoff.next_wait())
                continue
            except RETRYABLE_ERRORS as exc:
                drained = False
                self._orphans_possible = True
                await backoff.wait(exc)
                continue
            finally:
                self._scope = None
            if fetched is not None:
                drained = fetched.drained  # the script says so only when none wait recovered
                if self.budget is not None:
                    self.budget -= len(fetched.messages)
                await self._report_diverted(fetched)
                # Held before any reclaim: it hands back what is in flight and not held, and
                # this fetch's messages are in flight (they would run twice).
                self._add(first, fetched.messages, fetched.redeliveries, fetched.gone,
                          fetched.aside)
            if self._orphans_possible:
                await self._reclaim_orphans()
            if fetched is None:
                continue
            if fetched.messages:
                # Let the woken workers start their handlers before the next fetch is sent:
                # on an idle queue that send is the time between a message and its handler.
                await asyncio.sleep(0)
            if not fetched.messages and fetched.recovered_waiting and self.buffer:
                # Recovered messages wait for an empty buffer: let the workers drain it.
                self._empty.clear()
                await self._wait(self._empty)

    def _timed_out(self, exc: BaseException, want: int, cap: int) -> None:
        """A fetch's reply did not arrive in time: said once per run of them, with the cause;
        the next ones ask for half as much."""
        if not self.timed_out:
            log.warning(
                "fetch made no progress: its reply (up to %d message(s), %d bytes, or one "
                "message up to max_message_bytes=%d) did not arrive within the read timeout "
                "(%s: %s); backing off and asking for half as much until one gets through",
                want, cap, self.max_bytes, type(exc).__name__, exc)
        self.timed_out = min(self.timed_out + 1, 20)

    async def _report_diverted(self, fetched: Fetched) -> None:
        if not fetched.diverted:
            return
        log.error("%d message(s) over max_message_bytes (%d) moved to the failed store (reason "
                  "too_large) without being fetched", fetched.diverted, self.max_bytes)
        if fetched.diverted_ids and self._on_diverted is not None:
            await self._on_diverted(fetched.diverted_ids)

    def _add(self, first: int, batch: list[bytes], redeliveries: dict[int, Redelivery],
             gone: frozenset[int] = frozenset(), aside: frozenset[int] = frozenset()) -> None:
        if gone:  # taken back by a consumer that thought us dead: not ours to run
            log.warning("%d large message(s) were recovered by another consumer before this "
                        "one read them (was it paused past its heartbeat timeout?)", len(gone))
        if gone or aside:  # aside: over max_message_bytes once read, in the failed store
            skip = gone | aside
            kept = [i for i in range(len(batch)) if i not in skip]
            self._add_fields([first + i for i in kept], [batch[i] for i in kept],
                             {j: redeliveries[i] for j, i in enumerate(kept)
                              if i in redeliveries})
            return
        self._add_fields(range(first, first + len(batch)), batch, redeliveries)

    def _add_fields(self, fields: Sequence[int], batch: list[bytes],
                    redeliveries: dict[int, Redelivery]) -> None:
        if not batch:
            return
        sizes = list(map(len, batch))
        self.held.update(zip(fields, sizes, strict=True))
        self.held_bytes += sum(sizes)
        self.largest = max(self.largest, *sizes)
        if redeliveries:
            self.buffer.extend(
                (field, raw, redeliveries.get(i))
                for i, (field, raw) in enumerate(zip(fields, batch, strict=True))
            )
            if any(r.alone for r in redeliveries.values()):
                self._redelivery_done.clear()
        else:
            self.buffer.extend((field, raw, None) for field, raw in zip(fields, batch,
                                                                          strict=True))
        self._empty.clear()
        # One idle worker is woken; each woken worker that finds work left wakes two more. A
        # burst of slow handlers fans out to every idle worker in log2(n) loop turns, while
        # quick ones (which a single worker runs back to back) wake two workers in vain per
        # fetch instead of one per message fetched.
        self._wake(1)

    async def _reclaim_orphans(self) -> None:
        """After a fetch whose reply was lost, hand back what it moved but we never saw."""
        try:
            returned = await self.broker.reclaim(self.consumer_id, self.held)
        except RETRYABLE_ERRORS:
            return
        self._orphans_possible = False
        if returned:
            (log.debug if self.timed_out > 1 else log.warning)(
                "returned %d message(s) fetched during a connection failure", returned)
