"""``EventBus``: publishing, and the failed-jobs API, on one queue."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from earnorm._config import EventConfig
from earnorm._errors import (
    EventValidationError,
    JobNotFound,
    NotReplicated,
    PublishError,
)
from earnorm.events import _staging as staging
from earnorm.events._broker.broker import Broker, hold_max
from earnorm.events._broker.connect import mask_url, open_redis, unreachable
from earnorm.events._broker.errors import TRANSIENT_ERRORS
from earnorm.events._broker.queue_stats import queue_stats
from earnorm.events._broker.server import check_eviction
from earnorm.events._broker.topology import for_cluster, is_cluster
from earnorm.events._telemetry import tracing
from earnorm.events._wire import encode
from earnorm.events._wire.clock import ServerClock
from earnorm.events._wire.event import Event
from earnorm.events._wire.failures import (
    parse_cursor,
    read_record,
    requeue_message,
    with_envelope,
)
from earnorm.events._wire.records import FailedJob, QueueStats

log = logging.getLogger("earnorm.events")

Delay = float | int | timedelta | None
_CELERY_VISIBILITY_S = 3600  # kombu's default; longer etas are redelivered (wire.md 7)


def _positive_ms(value: Any, field: str, hint: str = "") -> int:
    """A positive duration (seconds or timedelta) in ms; ``EventValidationError`` naming
    ``field`` otherwise."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise EventValidationError(f"{field} must be a positive number of seconds or a "
                                   f"timedelta{hint}, got {value!r}")
    return max(1, int(seconds * 1000))


def _debounce_ms(key: Any, quiet: Any, delay: Delay, dedup_key: str | None) -> int:
    """The quiet period of a debounced publish, in ms; ``EventValidationError`` naming the
    argument that is missing or does not go with it."""
    if not isinstance(key, str) or not key:
        raise EventValidationError(f"debounce_key must be a non-empty string (with debounce=), "
                                   f"got {key!r}")
    quiet_ms = _positive_ms(quiet, "debounce", " (with debounce_key=)")
    if delay is not None or dedup_key is not None:
        raise EventValidationError("debounce_key does not go with delay= or dedup_key=: the "
                                   "debounce is the delay, counted from the last publish")
    return quiet_ms


def _seconds(delay: Delay) -> float | None:
    if delay is None:
        return None
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise EventValidationError(f"delay must be a non-negative number or timedelta: {delay!r}")
    return float(seconds) if seconds > 0 else None


class EventBus:
    """Publishes events to one Celery-format queue on Redis and manages its failed jobs.

    >>> bus = await EventBus.connect("redis://localhost:6379/0")  # doctest: +SKIP
    >>> await bus.publish(Event(name="user.created", data={"id": 7}))  # doctest: +SKIP
    '5b0b...'
    """

    def __init__(self, redis: Redis, config: EventConfig | None = None, *, url: str = "") -> None:
        # On a Redis Cluster the queue name carries a hash tag: ``orders`` is ``{orders}``.
        self.config = for_cluster(config or EventConfig(), is_cluster(redis))
        self.redis = redis
        self.broker = Broker(redis, self.config)
        self.url = url
        self._owns_redis = False
        self.clock = ServerClock()
        # The outbox relay running in this process, if any (init() with MongoDB starts one):
        # stats() reports it.
        self.outbox: staging.Outbox | None = None

    @classmethod
    async def connect(
        cls, redis_url: str, config: EventConfig | dict[str, Any] | None = None, **overrides: Any
    ) -> EventBus:
        """Open a bus on ``redis_url``; ``overrides`` are ``event_config`` keys."""
        raw = dict(config) if isinstance(config, dict) else {}
        if isinstance(config, EventConfig):
            cfg = config
        else:
            raw.update(overrides)
            cfg = EventConfig.from_dict(raw)
        bus = cls(open_redis(redis_url, largest_reply=hold_max(cfg.max_message_bytes)), cfg,
                  url=redis_url)
        bus._owns_redis = True
        try:
            await bus.sync_clock()
            await bus.check_server()
        except BaseException:
            await bus.close()
            raise
        return bus

    async def sync_clock(self) -> None:
        """Measure the offset to Redis's clock, so delays are due by the clock consumers use.
        ``BrokerConnectionError`` if Redis cannot be reached."""
        try:
            for _ in range(3):  # the clock keeps the tightest; the first includes connecting
                sent = time.time()
                server_ms = await self.broker.server_time_ms()
                self.clock.observe(server_ms, sent, time.time())
        except TRANSIENT_ERRORS as exc:
            raise unreachable(self.url, exc) from exc

    async def check_server(self) -> None:
        """``ConfigError`` if Redis may evict queued events (a maxmemory-policy other than
        noeviction) and ``event_config["allow_eviction"]`` is not True."""
        try:
            info = await self.broker.server.info()
        except TRANSIENT_ERRORS as exc:
            raise unreachable(self.url, exc) from exc
        check_eviction(info, self.config.allow_eviction, log)

    def now_ms(self) -> float:
        """Now, in unix ms by Redis's clock."""
        return self.clock.now_ms()

    async def close(self) -> None:
        await self.broker.close()
        if self._owns_redis:
            await self.redis.aclose()

    # ------------------------------------------------------------------ publish

    def _encode(
        self, event: Event, delay_s: float | None, priority: int
    ) -> tuple[bytes, int, float | None]:
        if not isinstance(event, Event):
            raise EventValidationError(f"expected an Event, got {type(event).__name__}")
        cfg = self.config
        if delay_s is not None and delay_s > cfg.max_delay:
            raise EventValidationError(
                f"delay of {delay_s:g}s for event {event.name!r} exceeds event_config.max_delay "
                f"({cfg.max_delay:g}s)"
            )
        due_ms = None if delay_s is None else self.now_ms() + delay_s * 1000
        eta = None if due_ms is None else datetime.fromtimestamp(due_ms / 1000, UTC)
        raw = encode.encode_event(
            event, cfg.queue_name, serializer=cfg.serializer, compression=cfg.compression,
            eta=eta, priority=priority,
        )
        if due_ms is not None and cfg.delay_mode == "eta":
            # The eta header carries the delay: ready now, held by whichever consumer takes it
            # (a Celery worker in memory; an EarnORM consumer moves it to ``Q:delayed``).
            if delay_s is not None and delay_s > _CELERY_VISIBILITY_S:
                log.warning("delay of %.0fs exceeds Celery's default visibility timeout; a "
                            "Celery worker may run event %s more than once", delay_s, event.id)
            due_ms = None
        if len(raw) > cfg.max_message_bytes:
            raise EventValidationError(
                f"event {event.name!r} encodes to {len(raw)} bytes, over the limit of "
                f"{cfg.max_message_bytes} (event_config.max_message_bytes)"
            )
        return raw, self.broker.keys.ready_index(priority), due_ms

    async def publish(
        self, event: Event, delay: Delay = None, *, priority: int = 0,
        headers: Mapping[str, Any] | None = None, dedup_key: str | None = None,
        dedup_ttl: float | timedelta = 3600.0, debounce_key: str | None = None,
        debounce: float | timedelta | None = None,
    ) -> str:
        """Publish one event; with ``delay`` (seconds or timedelta) it is held in Redis's
        delayed set until due, or, with ``delay_mode="eta"``, pushed now with Celery's ``eta``
        header. ``headers`` are added to the message's top-level headers (``traceparent``, a
        tenant, ...) and reach handlers as ``event.headers``. Returns the job id (the event
        id). With OpenTelemetry configured, a PRODUCER span ``apply_async/<name>`` wraps it
        and its context travels in the headers (as opentelemetry-instrumentation-celery does).

        ``dedup_key``: a second publish with the same key within ``dedup_ttl`` seconds
        (default one hour) is dropped, atomically with the push, and returns the first one's
        job id. Inside ``earnorm.transaction()`` the event goes to the outbox, in the
        transaction, and reaches Redis once it commits (its ``dedup_key`` applies then).

        ``debounce_key`` with ``debounce`` (seconds or timedelta): of a burst of publishes with
        the same key, only the last one runs, ``debounce`` seconds after it; each publish
        replaces the pending one atomically in Redis (a replaced event never runs, and no
        result is written for it).

        >>> await bus.publish(Event(name="search.reindex", data={"id": 7}),  # doctest: +SKIP
        ...                   debounce_key="reindex:7", debounce=5)
        """
        if headers:
            event = dataclasses.replace(event, headers={**event.headers, **headers})
        debounced = None
        if debounce_key is not None or debounce is not None:
            debounced = str(debounce_key), _debounce_ms(debounce_key, debounce, delay, dedup_key)
        dedup = None if dedup_key is None else (dedup_key, _positive_ms(dedup_ttl, "dedup_ttl"))
        active = tracing.tracer()
        if active is not None:
            with tracing.producer_span(active, event.name, event.id,
                                       self.config.queue_name) as span:
                traced = dataclasses.replace(event, headers=tracing.inject(event.headers, span))
                if debounced is not None:
                    span.set_attribute("earnorm.debounce_key", debounced[0])
                    return await self._debounced(traced, priority, *debounced)
                return await self._publish(traced, delay, priority, dedup)
        if debounced is not None:
            return await self._debounced(event, priority, *debounced)
        return await self._publish(event, delay, priority, dedup)

    async def _publish(self, event: Event, delay: Delay, priority: int,
                       dedup: tuple[str, int] | None = None) -> str:
        raw, index, due_ms = self._encode(event, _seconds(delay), priority)
        stage = staging.current()
        if stage is not None:
            await stage.stage(self.config.queue_name, [
                staging.Staged(event.id, raw, index, due_ms, dedup and dedup[0])])
            return event.id
        try:
            if dedup is not None:
                key, ttl_ms = dedup
                first = await self._with_retries(
                    self.broker.push_once_many, [(raw, index, due_ms, key, event.id)], ttl_ms)
                return first[0] or event.id
            if due_ms is not None:
                await self._with_retries(self.broker.schedule, raw, index, due_ms)
                return event.id
            try:  # the first attempt of the common case, without the retry loop's extra awaits
                await self.broker.push(raw, index)
            except NotReplicated:
                raise
            except TRANSIENT_ERRORS as exc:
                await self._with_retries(self.broker.push, raw, index, first_failure=exc)
            except RedisError as exc:
                raise self._refused(exc) from exc
        except NotReplicated as exc:
            exc.job_ids = [event.id]
            raise
        return event.id

    async def _debounced(self, event: Event, priority: int, key: str, quiet_ms: int) -> str:
        if staging.current() is not None:
            raise EventValidationError(
                "debounce_key is not supported inside earnorm.transaction(): the outbox relays "
                "each event as published; debounce after the transaction commits")
        raw, index, _ = self._encode(event, None, priority)
        await self._with_retries(self.broker.debounce, raw, index, quiet_ms, key)
        return event.id

    async def publish_batch(
        self, events: Iterable[Event], delay: Delay = None, *, priority: int = 0,
        headers: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Publish many events in one round trip, atomically (one LPUSH, or one MULTI/EXEC when
        they go to several lists or the delayed set). Returns their ids."""
        delay_s = _seconds(delay)
        events = list(events)
        if headers:
            events = [dataclasses.replace(e, headers={**e.headers, **headers}) for e in events]
        active = tracing.tracer()
        if active is not None and events:
            with tracing.producer_span(active, events[0].name, events[0].id,
                                       self.config.queue_name) as span:
                span.set_attribute("messaging.batch.message_count", len(events))
                events = [dataclasses.replace(e, headers=tracing.inject(e.headers, span))
                          for e in events]
                return await self._publish_batch(events, delay_s, priority)
        return await self._publish_batch(events, delay_s, priority)

    async def _publish_batch(
        self, events: list[Event], delay_s: float | None, priority: int
    ) -> list[str]:
        items = [self._encode(event, delay_s, priority) for event in events]
        stage = staging.current()
        if stage is not None and items:
            await stage.stage(self.config.queue_name, [
                staging.Staged(event.id, raw, index, due_ms, None)
                for event, (raw, index, due_ms) in zip(events, items, strict=True)])
        elif items:
            try:
                await self._with_retries(self.broker.push_many, items)
            except NotReplicated as exc:
                exc.job_ids = [event.id for event in events]
                raise
        return [event.id for event in events]

    async def _with_retries(
        self, operation: Any, *args: Any, first_failure: BaseException | None = None
    ) -> Any:
        """Run ``operation`` up to ``max_retries + 1`` times in all while Redis is unreachable,
        waiting the retry policy's delay between attempts. ``first_failure``: the caller's own
        first attempt already failed with it (it counts as attempt 1). A write Redis answers
        with a refusal (OOM, NOPERM, READONLY) is not sent again."""
        policy = self.config.retry_policy
        attempts = policy.max_retries + 1
        error = first_failure
        for attempt in range(1 if first_failure is not None else 0, attempts):
            if attempt:
                wait = policy.delay(attempt - 1)
                log.warning("publish failed (%s), retrying in %.2fs", error, wait)
                await anyio.sleep(wait)
            try:
                return await operation(*args)
            except NotReplicated:  # written, not confirmed: sending it again would duplicate it
                raise
            except TRANSIENT_ERRORS as exc:
                error = exc
            except RedisError as exc:
                raise self._refused(exc) from exc
        raise PublishError(
            f"publish to {mask_url(self.url)} failed after {attempts} attempt(s): "
            f"{type(error).__name__}: {error}"
        ) from error

    def _refused(self, exc: RedisError) -> PublishError:
        return PublishError(
            f"Redis at {mask_url(self.url)} refused the publish: {type(exc).__name__}: {exc}"
        )

    # ------------------------------------------------------------------ failed jobs

    async def get_failed_jobs(
        self, limit: int = 50, cursor: str | None = None, event_name: str | None = None,
        reason: str | None = None,
    ) -> list[FailedJob]:
        """Failed jobs in failure order, oldest first, at most ``limit`` (of ``event_name``
        and with ``reason`` only, if given). Each job has a ``cursor``: pass the last one back
        to get the next page. Removing or retrying jobs between pages neither skips nor
        repeats any.

        >>> page = await event_bus.get_failed_jobs(limit=50)  # doctest: +SKIP
        >>> more = await event_bus.get_failed_jobs(  # doctest: +SKIP
        ...     limit=50, cursor=page[-1]["cursor"])
        """
        return await self._failed_page(limit, cursor, event_name, reason, complete=True)

    async def _failed_page(
        self, limit: int, cursor: str | None, event_name: str | None, reason: str | None, *,
        complete: bool,
    ) -> list[FailedJob]:
        """``get_failed_jobs``; with ``complete=False`` a message kept aside is not read (a
        page of 500 large ones would be gigabytes)."""
        after = parse_cursor(cursor)
        out: list[FailedJob] = []
        while len(out) < limit:
            page = await self.broker.failed.page(after, max(limit, 100))
            if not page:
                break
            for job_id, failed_ms, record in page:
                after = (failed_ms, job_id)
                if record is None:
                    continue
                job = read_record(job_id, record, failed_ms)
                if event_name is not None and job.get("name") != event_name:
                    continue
                if reason is not None and job.get("reason") != reason:
                    continue
                if complete:
                    job = await self._complete(job)
                job["cursor"] = f"{failed_ms!r}:{job_id}"
                out.append(job)
                if len(out) >= limit:
                    break
        return out

    async def get_failed_job(self, job_id: str) -> FailedJob:
        """One failed job's record; ``JobNotFound`` if there is none."""
        record = await self.broker.failed.get(job_id)
        if record is None:
            raise JobNotFound(self._not_found(job_id))
        return await self._complete(read_record(job_id, record, None))

    async def _complete(self, job: FailedJob) -> FailedJob:
        """A record whose large message was kept aside, given its message (once)."""
        if not job.get("envelope_aside") or "envelope" in job or "envelope_base64" in job:
            return job
        return with_envelope(job, await self.broker.failed.aside_message(job["job_id"]))

    async def _requeue(self, job: FailedJob) -> bool:
        """Put one failed job's message back (False: removed or retried concurrently)."""
        job_id = job["job_id"]
        failed = self.broker.failed
        if job.get("reason") == "too_large":  # its message was kept aside, in Redis
            return await failed.requeue_oversized(job_id)
        job = await self._complete(job)
        fresh, priority = requeue_message(job)
        index = self.broker.keys.ready_index(priority)
        if job.get("envelope_aside"):
            return await failed.requeue_aside(job_id, fresh, index)
        return await failed.requeue(job_id, fresh, index)

    async def revoke(self, job_id: str | Iterable[str], *, terminate: bool = False) -> None:
        """Revoke one job (or several): a revoked job that is ready, delayed or waiting for a
        retry never runs; with ``terminate=True`` one that is running is cancelled too (and
        not retried). A Celery client waiting on it gets REVOKED (``TaskRevokedError``).

        The ids are kept in Redis for 3 hours (Celery's ``REVOKE_EXPIRES``), shared by every
        consumer of the queue and kept across their restarts, and broadcast as
        ``celery control revoke`` does, so Celery workers in the same fleet honour it too.

        >>> await bus.revoke(job_id)                  # doctest: +SKIP
        >>> await bus.revoke(job_id, terminate=True)  # doctest: +SKIP
        """
        ids = [job_id] if isinstance(job_id, str) else [str(i) for i in job_id]
        await self.broker.revoked.add(ids, terminate=terminate)
        await self.broker.revoked.broadcast(ids, terminate=terminate)

    async def retry_job(self, job_id: str) -> str:
        """Put a failed job back on its queue with retries reset; its record is removed.
        Only the handlers that gave up run again. ``JobNotFound`` for an unknown id."""
        job = await self.get_failed_job(job_id)
        if not await self._requeue(job):
            raise JobNotFound(f"failed job {job_id!r} was removed concurrently")
        return job_id

    async def remove_job(self, job_id: str) -> None:
        """Delete a failed job's record; ``JobNotFound`` for an unknown id."""
        if not await self.broker.failed.remove(job_id):
            raise JobNotFound(self._not_found(job_id))

    async def retry_failed(
        self, event_name: str | None = None, reason: str | None = None
    ) -> int:
        """``retry_job`` every failed job (of ``event_name`` and with ``reason`` only, if
        given); jobs whose message cannot be decoded stay in the store. Returns how many went
        back on the queue."""
        count = 0
        cursor = None
        while page := await self._failed_page(500, cursor, event_name, reason, complete=False):
            cursor = page[-1]["cursor"]
            batch = []
            for job in page:
                if job.get("reason") == "too_large" or job.get("envelope_aside"):
                    # kept aside: each moves back on its own, not through a script
                    with contextlib.suppress(EventValidationError):
                        count += await self._requeue(job)
                    continue
                try:
                    fresh, priority = requeue_message(job)
                    index = self.broker.keys.ready_index(priority)
                except (JobNotFound, EventValidationError):
                    continue
                batch.append((job["job_id"], fresh, index))
            count += await self.broker.failed.requeue_many(batch)
        return count

    async def purge_failed(
        self, event_name: str | None = None, reason: str | None = None
    ) -> int:
        """Delete every failed job (of ``event_name`` and with ``reason`` only, if given).
        Returns how many."""
        if event_name is None and reason is None:
            return await self.broker.failed.purge()
        count = 0
        cursor = None
        while page := await self._failed_page(500, cursor, event_name, reason, complete=False):
            cursor = page[-1]["cursor"]
            count += await self.broker.failed.remove_many([job["job_id"] for job in page])
        return count

    def _not_found(self, job_id: str) -> str:
        return f"no failed job with id {job_id!r} in queue {self.config.queue_name!r}"

    # ------------------------------------------------------------------ monitoring

    async def stats(self) -> QueueStats:
        """A snapshot of the queue and its Redis server, read from Redis (four round trips,
        pipelined)::

            {"queue": "app:events", "seen": True, "at": "2025-...",
             "ready": {0: 12, 3: 0, 6: 0, 9: 0}, "ready_total": 12,
             "delayed": 3, "inflight": 40, "failed": 1,
             "counters": {"processed": 1000, "failed": 1, "retried": 7},
             "processing_ms": {"count": 960, "p50": 0.41, "p95": 2.3, "p99": 8.1,
                               "window_s": 60.0},
             "latency_s": 0.012,
             "consumers": [{"id": "c-...", "host": ..., "pid": ..., "last_heartbeat": ...,
                            "last_heartbeat_age_s": 0.8, "alive": True, ...}]}

        ``counters`` are totals since the queue was created (dead-letterings for ``failed``,
        scheduled retries for ``retried``); ``processing_ms`` is over the consumers' recent
        window; ``latency_s`` is how long the oldest waiting event has been ready to run;
        ``seen`` is False when no key of the queue exists (never used, or a mistyped name).
        """
        stats = await queue_stats(self.broker, self.config)
        if self.outbox is not None:
            stats["outbox"] = await self.outbox.stats()
        return stats

    def __repr__(self) -> str:
        return f"<EventBus queue={self.config.queue_name!r} redis={mask_url(self.url)}>"
