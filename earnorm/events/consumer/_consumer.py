"""The consumer: one asyncio program that fetches, runs handlers, retries, and acks.

Tasks inside ``run()`` (one anyio task group, all owned and cancelled together):

- fetch loop: moves batches from the ready lists into our in-flight hash (atomic Lua), or blocks
  on BLMOVE into our landing list when the queue is empty;
- ``concurrency`` workers: take fetched messages and run their handlers;
- ack loop: coalesces acks into one HDEL per round trip;
- heartbeat loop: extends our deadline, recovers consumers past theirs, and publishes our
  summary (counters, recent processing times) for ``stats()``;
- promote loop: moves due delayed messages to the ready lists;
- batch loop: flushes batch handlers' batches whose ``batch_timeout`` passed (``_batch.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import anyio
import orjson
from anyio.abc import TaskGroup

from earnorm._config import EventConfig
from earnorm._errors import EarnORMError, MessageDecodeError
from earnorm.events import _protocol as protocol
from earnorm.events._bus import _TRANSIENT, EventBus
from earnorm.events._failures import FailureReason, HandlerFailure, failure_record
from earnorm.events._handlers import Handler, HandlerRegistry, default_registry
from earnorm.events._monitoring import ProcessingTimes
from earnorm.events._redis_url import mask_url
from earnorm.events.consumer._batch import Batches, Failures, PendingEvent, run_batch
from earnorm.events.consumer._calls import call_handler, plan_retries, run_handlers

log = logging.getLogger("earnorm.consumer")

_MAX_FETCH = 1000  # keeps Lua's unpack() well inside its stack limit
_ETA_SLACK_MS = 5.0  # an eta this close is run now rather than bounced through the delayed set
_Plan = tuple[tuple[Handler, ...], tuple[Handler, ...], tuple[Handler, ...]]


class Consumer:
    """Consumes one queue and runs registered handlers.

    Foreground::

        await Consumer("redis://localhost:6379/0", queue_name="app:events").run()

    Embedded in an application (runs in the background until the block exits)::

        async with Consumer(bus=earnorm.event_bus, concurrency=50):
            await serve_forever()
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        bus: EventBus | None = None,
        config: EventConfig | Mapping[str, Any] | None = None,
        queue_name: str | None = None,
        registry: HandlerRegistry | None = None,
        concurrency: int = 100,
        prefetch: int | None = None,
        shutdown_timeout: float = 30.0,
        poll_interval: float = 0.5,
        promote_interval: float = 0.1,
        consumer_id: str | None = None,
    ) -> None:
        if bus is None and redis_url is None:
            raise EarnORMError("Consumer needs redis_url= or bus=")
        if concurrency < 1:
            raise EarnORMError(f"concurrency must be >= 1, got {concurrency}")
        if isinstance(config, EventConfig):
            cfg = config
        elif config is None and bus is not None:
            cfg = bus.config
        else:
            cfg = EventConfig.from_dict(config)
        if queue_name and cfg.queue_name != queue_name:
            cfg = dataclasses.replace(cfg, queue_name=queue_name)
        self.config = cfg
        self.redis_url = redis_url or (bus.url if bus else "")
        self._given_bus = bus
        self.registry = registry if registry is not None else default_registry
        self.concurrency = concurrency
        self.prefetch = max(prefetch or 2 * concurrency, 1)
        self.shutdown_timeout = shutdown_timeout
        self.poll_interval = poll_interval
        self.promote_interval = promote_interval
        self.consumer_id = consumer_id or f"c-{uuid.uuid4().hex[:12]}"
        self.processed = 0
        self.failed = 0
        self.retried = 0
        self._bus: EventBus | None = None
        self._buffer: deque[tuple[int, bytes]] = deque()
        self._have_work = asyncio.Event()
        self._have_room = asyncio.Event()
        self._acks: list[int] = []
        self._have_acks = asyncio.Event()
        self._running = 0
        self._idle = asyncio.Event()
        self._seq = 0
        self._held: set[int] = set()  # fields in our in-flight hash that we know about
        self._orphans_possible = False
        self._clock_offset_ms = 0.0
        self._stopping = False
        self._fetch_scope: anyio.CancelScope | None = None
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._task_group: TaskGroup | None = None
        self._background: Any = None
        self._batches = Batches()
        # event name -> (handlers_for's tuple, handlers run at once, batch handlers)
        self._plans: dict[str, _Plan] = {}
        self._timings = ProcessingTimes()
        self._started_ms = time.time() * 1000
        self._unreported = 0  # acked events not yet added to the queue's processed counter

    # ------------------------------------------------------------------ lifecycle

    @property
    def bus(self) -> EventBus:
        if self._bus is None:
            raise EarnORMError("consumer is not running")
        return self._bus

    async def run(self) -> None:
        """Run until ``stop()`` is called or the calling task is cancelled."""
        self._bus = self._given_bus or await EventBus.connect(self.redis_url, self.config)
        try:
            await self._heartbeat_once()
            self._log_startup()
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                tg.start_soon(self._heartbeat_loop)
                tg.start_soon(self._promote_loop)
                tg.start_soon(self._ack_loop)
                tg.start_soon(self._batch_loop)
                for _ in range(self.concurrency):
                    tg.start_soon(self._worker)
                self._started.set()
                await self._fetch_loop()
                # Stopping: what is running may finish, then open batches are flushed; what was
                # fetched but not started waits in our in-flight hash and is handed back below.
                self._have_work.set()
                with anyio.move_on_after(self.shutdown_timeout):
                    await self._drain()
                if self._running or len(self._batches):
                    log.warning("shutdown timeout: cancelling %d running handler(s); %d batched "
                                "event(s) go back to the queue", self._running, len(self._batches))
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(15):
                await self._finish()
            self._stopped.set()

    async def _drain(self) -> None:
        while True:
            while self._running:
                self._idle.clear()
                await self._idle.wait()
            batches = self._batches.take_all()
            if not batches:
                return
            for handler, items in batches:
                await self._run_batch(handler, items)

    def stop(self) -> None:
        """Ask the consumer to stop: no more fetching; running handlers may finish."""
        self._stopping = True
        self._have_work.set()
        self._have_room.set()
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()

    async def wait_started(self) -> None:
        await self._started.wait()

    async def __aenter__(self) -> Self:
        self._background = asyncio.get_running_loop().create_task(self.run())
        started = asyncio.ensure_future(self._started.wait())
        done, _ = await asyncio.wait(
            {self._background, started}, return_when=asyncio.FIRST_COMPLETED
        )
        if self._background in done:
            started.cancel()
            self._background.result()  # raises the startup error
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._background is not None:
            await self._background

    async def _finish(self) -> None:
        bus = self._bus
        if bus is None:
            return
        try:
            await self._flush_acks()
            await bus.broker.count_processed(self._unreported)
            self._unreported = 0
            returned = await bus.broker.recover(self.consumer_id, force=True)
            if returned:
                log.info("returned %d unfinished message(s) to the queue", returned)
        except _TRANSIENT as exc:
            log.warning("could not return in-flight messages (%s); another consumer will "
                        "recover them after the heartbeat timeout", exc)
        finally:
            if self._given_bus is None:
                await bus.close()

    def _log_startup(self) -> None:
        names = sorted({h.pattern for h in self.registry.all()})
        log.info(
            "consumer %s: queue=%s handlers=%d %s concurrency=%d prefetch=%d redis=%s",
            self.consumer_id, self.config.queue_name, len(self.registry), names,
            self.concurrency, self.prefetch, mask_url(self.redis_url),
        )

    # ------------------------------------------------------------------ loops

    async def _fetch_loop(self) -> None:
        broker = self.bus.broker
        low_water = max(self.prefetch // 2, 1)
        failures = 0
        while not self._stopping:
            room = self.prefetch - len(self._buffer)
            if room < low_water:
                self._have_room.clear()
                await self._have_room.wait()
                continue
            want = min(room, _MAX_FETCH)
            first = self._seq + 1
            # Field numbers are spent before the call: if its reply is lost, the next fetch
            # must not reuse (and overwrite) fields the script may already have written.
            self._seq += want
            batch: list[bytes] = []
            try:
                with anyio.CancelScope() as scope:
                    self._fetch_scope = scope
                    if self._stopping:
                        break
                    # The fetch script also counts what we handled since the last one.
                    handled, self._unreported = self._unreported, 0
                    batch = await broker.fetch(self.consumer_id, want, first - 1, handled)
                    if not batch:
                        await broker.wait_for_message(self.consumer_id, self.poll_interval)
                if scope.cancelled_caught:
                    break
                failures = 0
            except _TRANSIENT as exc:
                failures += 1
                self._orphans_possible = True
                await self._backoff("fetch", exc, failures)
                continue
            finally:
                self._fetch_scope = None
            if self._orphans_possible:
                await self._reclaim_orphans()
            if batch:
                fields = range(first, first + len(batch))
                self._held.update(fields)
                self._buffer.extend(zip(fields, batch, strict=True))
                self._have_work.set()

    async def _reclaim_orphans(self) -> None:
        """After a fetch whose reply was lost, hand back what it moved but we never saw."""
        try:
            returned = await self.bus.broker.reclaim(self.consumer_id, self._held)
        except _TRANSIENT:
            return
        self._orphans_possible = False
        if returned:
            log.warning("returned %d message(s) fetched during a connection failure", returned)

    async def _worker(self) -> None:
        buffer = self._buffer
        failures = 0  # consecutive Redis failures while settling: the backoff grows with them
        while True:
            while not buffer or self._stopping:
                if self._stopping:
                    return
                self._have_work.clear()
                await self._have_work.wait()
            field, raw = buffer.popleft()
            if len(buffer) < max(self.prefetch // 2, 1):
                self._have_room.set()
            self._running += 1
            try:
                await self._process(field, raw)
                failures = 0
            except _TRANSIENT as exc:
                # Redis failed while settling the message: it is still in our in-flight hash,
                # so it is neither lost nor settled. Run it again once Redis is back.
                failures += 1
                await self._backoff("settle", exc, failures)
                buffer.appendleft((field, raw))
                self._have_work.set()
            finally:
                self._running -= 1
                if not self._running:
                    self._idle.set()

    async def _ack_loop(self) -> None:
        failures = 0
        while True:
            await self._have_acks.wait()
            self._have_acks.clear()
            try:
                await self._flush_acks()
                failures = 0
            except _TRANSIENT as exc:
                failures += 1
                await self._backoff("ack", exc, failures)
                self._have_acks.set()

    async def _flush_acks(self) -> None:
        if not self._acks:
            return
        fields, self._acks = self._acks, []
        try:
            await self.bus.broker.ack(self.consumer_id, fields)
        except BaseException:
            self._acks[:0] = fields  # keep them for the next try
            raise
        self._held.difference_update(fields)
        self._unreported += len(fields)  # only handled events are acked here

    async def _heartbeat_once(self) -> None:
        timeout_ms = int(self.config.heartbeat_timeout * 1000)
        before = time.time()
        now_ms, dead = await self.bus.broker.heartbeat(self.consumer_id, timeout_ms)
        self._clock_offset_ms = now_ms - (before + time.time()) * 500
        await self.bus.broker.publish_summary(self.consumer_id, self._summary(now_ms))
        for other in dead:
            if other == self.consumer_id:
                log.warning("this consumer missed its heartbeat deadline; its in-flight "
                            "messages may be delivered again")
                continue
            moved = await self.bus.broker.recover(other)
            if moved >= 0:
                log.warning("recovered %d message(s) from dead consumer %s", moved, other)

    async def _heartbeat_loop(self) -> None:
        failures = 0
        while True:
            await anyio.sleep(self.config.heartbeat_interval)
            try:
                await self._heartbeat_once()
                failures = 0
            except _TRANSIENT as exc:
                failures += 1
                await self._backoff("heartbeat", exc, failures)

    def _summary(self, now_ms: float) -> bytes:
        return orjson.dumps({
            "consumer_id": self.consumer_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_ms": self._started_ms,
            "heartbeat_ms": now_ms,
            "concurrency": self.concurrency,
            "running": self._running,
            "batched": len(self._batches),
            "processed": self.processed,
            "failed": self.failed,
            "retried": self.retried,
            "window_s": self._timings.window,
            "histogram": self._timings.histogram(),
        }, option=orjson.OPT_NON_STR_KEYS)

    async def _promote_loop(self) -> None:
        broker = self.bus.broker
        failures = 0
        while True:
            try:
                moved, next_due, now = await broker.promote_due(500)
                failures = 0
            except _TRANSIENT as exc:
                failures += 1
                await self._backoff("promote", exc, failures)
                continue
            if moved >= 500:
                continue
            wait = self.promote_interval
            if next_due is not None:
                wait = min(max((next_due - now) / 1000, 0.0), wait)
            await anyio.sleep(wait)

    async def _batch_loop(self) -> None:
        """Flushes batches whose ``batch_timeout`` passed; full ones are run by the worker
        that filled them."""
        batches = self._batches
        while True:
            deadline = batches.next_deadline()
            batches.changed.clear()
            if deadline is None:
                await batches.changed.wait()
                continue
            with anyio.move_on_after(deadline - time.monotonic()):
                await batches.changed.wait()  # a new batch may be due sooner
            for handler, items in batches.take_due():
                assert self._task_group is not None
                self._running += 1  # shutdown waits for it like for a worker
                self._task_group.start_soon(self._run_counted_batch, handler, items)

    async def _run_counted_batch(self, handler: Handler, items: list[PendingEvent]) -> None:
        try:
            await self._run_batch(handler, items)
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    async def _run_batch(self, handler: Handler, items: list[PendingEvent]) -> None:
        started = time.perf_counter()
        await run_batch(handler, items, call_handler)
        share = (time.perf_counter() - started) / len(items)
        for item in items:
            self._timings.record(share)
            item.waiting -= 1
            if item.waiting:
                continue
            failures = 0
            while True:  # the batch ran: settle each event, whatever Redis does meanwhile
                try:
                    await self._settle(item.field, item.raw, item.message, item.failures)
                    break
                except _TRANSIENT as exc:
                    failures += 1
                    await self._backoff("settle", exc, failures)

    async def _backoff(self, what: str, exc: BaseException, failures: int) -> None:
        wait = min(0.05 * 2 ** min(failures, 8), 5.0)
        log.warning("%s: Redis unavailable (%s: %s); retrying in %.2fs",
                    what, type(exc).__name__, exc, wait)
        await anyio.sleep(wait)

    # ------------------------------------------------------------------ one message

    def _now_ms(self) -> float:
        return time.time() * 1000 + self._clock_offset_ms

    def _ack(self, field: int) -> None:
        self._acks.append(field)
        self._have_acks.set()

    async def _process(self, field: int, raw: bytes) -> None:
        try:
            message = protocol.decode(raw, self.config.max_message_bytes)
        except MessageDecodeError as exc:
            await self._dead_letter(field, raw, FailureReason.UNDECODABLE, None, str(exc))
            return
        handlers = self.registry.handlers_for(message.task)
        if not handlers:
            await self._dead_letter(
                field, raw, FailureReason.NO_HANDLER, message,
                f"no handler registered for {message.task!r}",
            )
            return
        now_ms = self._now_ms()
        if message.expires is not None and message.expires.timestamp() * 1000 <= now_ms:
            await self._dead_letter(
                field, raw, FailureReason.EXPIRED, message,
                f"expired at {message.expires.isoformat()} before it could run",
            )
            return
        if message.eta is not None:
            due_ms = message.eta.timestamp() * 1000
            if due_ms > now_ms + _ETA_SLACK_MS:
                # A Celery message with a future eta waits in Redis, never in our memory.
                index = self.bus.broker.keys.ready_index(message.priority)
                await self.bus.broker.defer(self.consumer_id, field, raw, index, due_ms)
                self._held.discard(field)
                return
        pending = message.headers.get(protocol.H_PENDING)
        plan = self._plans.get(message.task)
        if pending is None and plan is not None and plan[0] is handlers:
            _, now, batched = plan
        else:
            if isinstance(pending, list):
                still = tuple(h for h in handlers if h.name in pending)
                handlers = still or handlers  # a renamed handler must not make the event vanish
            now = tuple(h for h in handlers if h.batch_size is None)
            batched = tuple(h for h in handlers if h.batch_size is not None)
            if pending is None:
                self._plans[message.task] = (handlers, now, batched)
        try:
            event = message.to_event()
        except EarnORMError as exc:
            await self._dead_letter(field, raw, FailureReason.UNDECODABLE, message, str(exc))
            return
        failures: Failures = []
        if now:
            started = time.perf_counter()
            failures = await run_handlers(now, event)
            self._timings.record(time.perf_counter() - started)
        if batched:
            item = PendingEvent(field, raw, message, event, failures, len(batched))
            for handler in batched:
                full = self._batches.add(handler, item)
                if full is not None:
                    await self._run_batch(handler, full)
        elif failures:
            await self._retry_or_dead_letter(field, raw, message, failures)
        else:
            self.processed += 1
            self._ack(field)

    async def _settle(
        self, field: int, raw: bytes, message: protocol.Message, failures: Failures
    ) -> None:
        if not failures:
            self.processed += 1
            self._ack(field)
            return
        await self._retry_or_dead_letter(field, raw, message, failures)

    async def _retry_or_dead_letter(
        self, field: int, raw: bytes, message: protocol.Message, failures: Failures
    ) -> None:
        """Each failed handler follows its own policy: the ones that may still retry go into
        one retry message (waiting the longest of their delays); the ones that gave up go to
        the failed store; both in the same transaction that acks the message."""
        retry, gave_up, delay_s = plan_retries(message, failures, self.config.retry_policy)
        retry_item = None
        if retry:
            due_ms = self._now_ms() + delay_s * 1000
            fresh = protocol.encode_retry(
                message, datetime.fromtimestamp(due_ms / 1000, UTC), [h.name for h, _ in retry]
            )
            retry_item = (fresh, self.bus.broker.keys.ready_index(message.priority), due_ms)
        if not gave_up:
            await self.bus.broker.settle(self.consumer_id, field, retry=retry_item)
            self._held.discard(field)
            self.retried += 1
            return
        await self._dead_letter(
            field, raw, FailureReason.HANDLER_ERROR, message, "", [f for _, f in gave_up],
            retry=retry_item,
        )

    async def _dead_letter(
        self, field: int, raw: bytes, reason: FailureReason, message: protocol.Message | None,
        detail: str, failures: list[HandlerFailure] | None = None,
        retry: tuple[bytes, int, float] | None = None,
    ) -> None:
        job_id = message.id if message is not None else f"undecodable-{uuid.uuid4()}"
        now_ms = self._now_ms()
        # Handlers of this event that gave up on an earlier attempt already have a record.
        previous = None
        if message is not None and message.retries and reason is FailureReason.HANDLER_ERROR:
            previous = await self.bus.broker.failed_get(job_id)
        record = failure_record(
            job_id=job_id, reason=reason, raw=raw, now_ms=now_ms, message=message,
            detail=detail, failures=failures, previous=previous,
        )
        why = detail or "; ".join(f"{f.handler}: {f.error!r}" for f in failures or ())
        log.error("message %s moved to the failed store: %s: %s", job_id, reason, why)
        await self.bus.broker.settle(
            self.consumer_id, field, retry=retry, dead=(job_id, record, now_ms)
        )
        self._held.discard(field)
        self.failed += 1
        if retry is not None:
            self.retried += 1

