"""The consumer: one asyncio program that fetches, runs handlers, retries, and acks.

It owns one anyio task group; every task in it is started here and cancelled with it:

- ``Fetcher.run`` (``_fetcher.py``): ready lists -> our in-flight hash -> the buffer;
- ``concurrency`` workers (``_worker`` below): take a message, decide, run, apply the outcome;
- ``AckBatcher.run`` (``_acks.py``): coalesced acks;
- ``Heartbeat.run`` (``_heartbeat.py``): liveness, recovery of dead consumers, our summary;
- ``promote_due_forever`` (``_promoter.py``): due delayed messages -> ready lists;
- the batch flusher (``_batch.flush_due_batches``): batches whose ``batch_timeout`` passed.

What happens to a message is decided by the pure functions of ``_decide.py``; this module does
the I/O they ask for, through the broker layer only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import orjson
from anyio.abc import TaskGroup
from redis.asyncio import Redis

from earnorm._config import EventConfig
from earnorm._errors import (
    ConfigError,
    EarnORMError,
)
from earnorm.events._broker import topology
from earnorm.events._broker.broker import Broker, Redelivery, hold_max
from earnorm.events._broker.celery_presence import CeleryPresence
from earnorm.events._broker.connect import open_redis, unreachable
from earnorm.events._broker.errors import RETRYABLE_ERRORS, TRANSIENT_ERRORS
from earnorm.events._broker.idempotency import DoneMarks
from earnorm.events._broker.results import ResultBackend
from earnorm.events._bus import EventBus
from earnorm.events._handlers import Handler, HandlerRegistry, default_registry
from earnorm.events._periodic import Schedule, default_schedules
from earnorm.events._telemetry import http, tracing
from earnorm.events._telemetry.metrics import Metrics
from earnorm.events._telemetry.timings import ProcessingTimes
from earnorm.events._wire.clock import ServerClock
from earnorm.events._wire.progress import progress_sink
from earnorm.events._wire.records import QueueStats
from earnorm.events.consumer._acks import AckBatcher
from earnorm.events.consumer._background import RunsInBackground
from earnorm.events.consumer._batch import Batches, PendingEvent, flush_due_batches
from earnorm.events.consumer._endpoints import Endpoints
from earnorm.events.consumer._fetcher import MAX_INFLIGHT_BYTES, Fetcher
from earnorm.events.consumer._heartbeat import Heartbeat
from earnorm.events.consumer._keylimits import KeyLimits
from earnorm.events.consumer._loop_watch import Block, LoopWatch, Watched, watch_loop
from earnorm.events.consumer._pipeline import Pipeline
from earnorm.events.consumer._progress import ProgressReporter
from earnorm.events.consumer._promoter import promote_due_forever
from earnorm.events.consumer._rates import RateLimits
from earnorm.events.consumer._recycle import (
    check_limits,
    check_memory_at_start,
    watch_memory,
)
from earnorm.events.consumer._resilient import RedisHealth, until_done
from earnorm.events.consumer._revocations import Revocations
from earnorm.events.consumer._scheduler import Scheduler
from earnorm.events.consumer._settle import Settler
from earnorm.events.consumer._startup import log_startup, warn_if_unused
from earnorm.events.consumer._task_events import TaskEvents

log = logging.getLogger("earnorm.consumer")


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class Consumer(RunsInBackground):
    """Consumes one queue and runs registered handlers.

    Foreground::

        await Consumer("redis://localhost:6379/0", queue_name="app:events").run()

    Embedded in an application (runs in the background until the block exits)::

        async with Consumer(bus=earnorm.event_bus, concurrency=50):
            await serve_forever()

    The queue and its settings come from ``config`` (or ``bus.config``), with ``queue_name``
    overriding the queue: with ``bus=`` and another ``queue_name``, the consumer shares the
    bus's Redis connection but consumes, logs and reports its own queue.
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
        max_inflight_bytes: int = MAX_INFLIGHT_BYTES,
        shutdown_timeout: float = 30.0,
        poll_interval: float = 0.5,
        promote_interval: float = 0.1,
        consumer_id: str | None = None,
        celery_events: bool = False,
        metrics: bool = False,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        schedules: Sequence[Schedule] | None = None,
        block_warn: float = 1.0,
        block_limit: float | None = None,
        max_tasks: int | None = None,
        max_memory_mb: float | None = None,
        gc_freeze: bool = True,
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
        self.redis_url = redis_url or (bus.url if bus else "")
        cluster = topology.is_cluster(bus.redis) if bus is not None else (
            topology.kind(self.redis_url) == "cluster")
        if cluster and celery_events:
            raise ConfigError("celery_events needs a single Redis or Sentinel, not a cluster: "
                              "Celery's remote-control keys are global, and Celery itself does "
                              "not run on Redis Cluster")
        self.config = topology.for_cluster(cfg, cluster)
        self._given_bus = bus
        self.registry = registry if registry is not None else default_registry
        # Periodic schedules this consumer fires (each tick once across all consumers): the
        # @periodic_event ones when it uses the default handler registry.
        if schedules is None:
            schedules = default_schedules.all() if self.registry is default_registry else []
        self.schedules = list(schedules)
        self.concurrency = concurrency
        self.prefetch = max(prefetch or 2 * concurrency, 1)
        if isinstance(max_inflight_bytes, bool) or not isinstance(max_inflight_bytes, int) \
                or max_inflight_bytes < 1:
            raise ConfigError("max_inflight_bytes must be a positive integer, got "
                              f"{max_inflight_bytes!r}")
        self.max_inflight_bytes = max_inflight_bytes
        self.shutdown_timeout = shutdown_timeout
        # A handler blocking the event loop (``_loop_watch``): named and counted past
        # block_warn s; a --processes child is replaced past its hard limit or block_limit
        # (default: the heartbeat timeout, when other consumers take its messages anyway, or
        # twice block_warn if that is longer).
        self.block_warn = _positive("block_warn", block_warn)
        self.block_limit = max(self.config.heartbeat_timeout, 2 * self.block_warn) \
            if block_limit is None else _positive("block_limit", block_limit)
        if self.block_limit <= self.block_warn:
            raise ConfigError(f"block_limit ({self.block_limit:g}s) must be greater than "
                              f"block_warn ({self.block_warn:g}s)")
        self._watch: tuple[LoopWatch, Watched] | None = None
        self._loop_blocks = 0
        self.poll_interval = poll_interval
        self.promote_interval = promote_interval
        # Retire (fetch no more, finish, return) after this many messages, or past this much
        # resident memory: for --processes children, which the supervisor then replaces.
        check_limits(max_tasks, max_memory_mb)
        self.max_tasks = max_tasks
        self.max_memory_mb = max_memory_mb
        if not isinstance(gc_freeze, bool):
            raise ConfigError(f"gc_freeze must be True or False, got {gc_freeze!r}")
        # Once started, the objects alive then (modules, the app, its handlers) leave the
        # cyclic collector's reach (gc.freeze(), once per process): a full collection then
        # scans only what was made since, and stops the loop for well under a millisecond
        # instead of ~20 ms.
        self.gc_freeze = gc_freeze
        self.retired: str | None = None  # "max_tasks" or "max_memory" once it retired
        self.consumer_id = consumer_id or f"c-{uuid.uuid4().hex[:12]}"
        if not self.consumer_id or set(self.consumer_id) & {":", ",", " "}:
            raise EarnORMError(f"consumer_id must have no ':', ',' or spaces: "
                               f"{self.consumer_id!r}")
        self.clock = ServerClock()
        # Celery task/worker events and remote control (``celery inspect``, Flower): optional.
        self.celery_events = celery_events
        self._presence: CeleryPresence | None = None
        # Prometheus metrics (celery-exporter's names), and /metrics, /healthz, /readyz.
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self._metrics = Metrics(self.config.queue_name, self.node_name) if (
            metrics or metrics_port is not None) else None
        self._pipe: Pipeline | None = None  # built in run(), with the stages that are on
        self._redis: Redis | None = None
        self._broker: Broker | None = None
        self._bus: EventBus | None = None
        self._fetcher: Fetcher | None = None
        self._acks: AckBatcher | None = None
        self._settler: Settler | None = None
        self._done: DoneMarks | None = None  # idempotent handlers' marks
        self._running = 0
        self._idle = asyncio.Event()
        self._running_changed = asyncio.Event()
        self._alone_waiting = False  # a recovered message waits for the others to finish
        self._health = RedisHealth()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stop_requested = False
        self._task_group: TaskGroup | None = None
        self._background: asyncio.Task[None] | None = None
        self._batches = Batches()
        self._timings = ProcessingTimes()
        self._started_ms = time.time() * 1000

    # ------------------------------------------------------------------ lifecycle

    @property
    def node_name(self) -> str:
        """This consumer as a Celery node: ``earnorm-<consumer id>@<host>``."""
        return f"earnorm-{self.consumer_id}@{socket.gethostname()}"

    @property
    def bus(self) -> EventBus:
        """An ``EventBus`` on this consumer's queue and connection (failed jobs, stats)."""
        if self._broker is None:
            raise EarnORMError("consumer is not running")
        if self._bus is None:
            given = self._given_bus
            if given is not None and given.config == self.config:
                self._bus = given
            else:
                self._bus = EventBus(self._broker.redis, self.config, url=self.redis_url)
                self._bus.clock = self.clock
        return self._bus

    async def _connect(self) -> Broker:
        if self._given_bus is not None:
            self._redis = self._given_bus.redis
        else:
            self._redis = open_redis(self.redis_url,
                                     largest_reply=hold_max(self.config.max_message_bytes))
        broker = Broker(self._redis, self.config)
        self._broker = broker
        return broker

    async def run(self) -> None:
        """Run until ``stop()`` is called or the calling task is cancelled.

        ``BrokerConnectionError`` if Redis cannot be reached when it starts; once running it
        rides out Redis outages (every loop backs off and retries)."""
        if self.max_memory_mb is not None:
            check_memory_at_start(self.max_memory_mb)
        broker = await self._connect()
        self._done = DoneMarks(broker.redis, broker.keys)
        health = self._health
        acks = self._acks = AckBatcher(broker, self.consumer_id, self._forget_acked, health)
        fetcher = self._fetcher = Fetcher(
            broker, self.consumer_id, self.prefetch, self.poll_interval,
            self.config.max_message_bytes, health, self.config.max_deliveries,
            self.max_inflight_bytes, self._diverted, budget=self.max_tasks,
        )
        results = None
        if self.config.result_backend is not None:
            results = ResultBackend(open_redis(self.config.result_backend),
                                    self.config.result_expires)
        metrics = self._metrics
        self._settler = Settler(broker, self.consumer_id, self.clock, acks, fetcher.forget,
                                health, results,
                                (lambda task: metrics.task("sent", task)) if metrics else None)
        heartbeat = Heartbeat(broker, self.consumer_id, self.config, self.clock, self._summary,
                              health, self._metrics.recovered if self._metrics else None)
        try:
            # before our own writes make it used:
            await warn_if_unused(broker, self.config.queue_name, self.redis_url)
            await heartbeat.watch.start()  # ConfigError for a Redis that may evict our keys
            await heartbeat.once()
        except TRANSIENT_ERRORS as exc:
            await self._close_connection()
            raise unreachable(self.redis_url, exc) from exc
        except BaseException:
            await self._close_connection()
            raise
        progress_token = None
        try:
            log_startup(self.consumer_id, self.config.queue_name, self.registry,
                        self.concurrency, self.prefetch, self.redis_url)
            if self._stop_requested:
                fetcher.stop()
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                tg.start_soon(heartbeat.run)
                revocations = Revocations(broker.revoked, self._terminate)
                if self.celery_events:
                    self._presence = CeleryPresence(
                        broker.redis, node_name=self.node_name,
                        queue=self.config.queue_name, concurrency=self.concurrency,
                        prefetch=self.prefetch,
                        task_names=lambda: {h.pattern for h in self.registry.all()},
                        on_shutdown=self.stop, revoked_ids=revocations.live,
                    )
                    await tg.start(self._presence.run)
                await tg.start(revocations.run)
                observer = None
                if self._presence is not None or self._metrics is not None:
                    observer = TaskEvents(self._presence, self._metrics)
                self._pipe = Pipeline(
                    config=self.config, registry=self.registry, clock=self.clock,
                    keys=broker.keys, settler=self._settler, batches=self._batches,
                    timings=self._timings, done=self._done, observer=observer,
                    tracer=tracing.tracer(), revoked=revocations,
                    rates=RateLimits(broker, self.config, health,
                                     self._metrics.rate_wait if self._metrics else None),
                    keys_limits=KeyLimits(broker, self.consumer_id, health, fetcher.forget,
                                          self._metrics.key_wait if self._metrics else None))
                self._pipe.progress = ProgressReporter(
                    broker.progress, self.consumer_id, self._pipe.running_ids, results,
                    self._presence)
                # every task started from here on (the workers running handlers) reports to it
                progress_token = progress_sink.set(self._pipe.progress)
                self._watch_loop(self._pipe)
                if self._metrics is not None:
                    tg.start_soon(Endpoints(self).refresh_metrics)
                if self.metrics_port is not None:
                    tg.start_soon(http.serve, self.http_routes(), self.metrics_host,
                                  self.metrics_port)
                tg.start_soon(promote_due_forever, broker, self.promote_interval)
                if self.schedules:
                    tg.start_soon(Scheduler(
                        broker, self.schedules, self.config, self.clock, health,
                        self._metrics.schedule_tick if self._metrics else None).run)
                tg.start_soon(acks.run)
                tg.start_soon(flush_due_batches, self._batches, self._start_batch)
                for _ in range(self.concurrency):
                    tg.start_soon(self._worker)
                if self.max_memory_mb is not None:
                    tg.start_soon(watch_memory, self.max_memory_mb, self._retire_for_memory)
                if self.gc_freeze and not gc.get_freeze_count():  # once per process
                    gc.collect()  # garbage frozen now would never be collected
                    gc.freeze()
                self._started.set()
                await fetcher.run()
                if fetcher.spent and not self._stop_requested:
                    self.retired = self.retired or "max_tasks"
                    log.info("retiring (%s): fetching no more, finishing %d fetched message(s)",
                             self.retired, len(fetcher.held))
                # Stopping: what is running may finish, then open batches are flushed; what was
                # fetched but not started waits in our in-flight hash and is handed back below.
                fetcher.wake_workers()
                with anyio.move_on_after(self.shutdown_timeout):
                    await self._drain()
                if self._running or len(self._batches):
                    log.warning("shutdown timeout: cancelling %d running handler(s); %d batched "
                                "event(s) go back to the queue", self._running, len(self._batches))
                tg.cancel_scope.cancel()
        finally:
            if progress_token is not None:
                progress_sink.reset(progress_token)
            with anyio.CancelScope(shield=True), anyio.move_on_after(15):
                await self._finish(broker, acks)
            if self._watch is not None:
                self._watch[0].leave(self._watch[1])
                self._watch = None
            self._stopped.set()

    def _watch_loop(self, pipe: Pipeline) -> None:
        metrics = self._metrics

        def blocked(block: Block) -> None:  # in the watch's thread
            self._loop_blocks += 1
            if metrics is not None:
                metrics.loop_blocked(block.handler)

        def ended(block: Block, seconds: float) -> None:
            if metrics is not None:
                metrics.loop_unblocked(seconds)

        watched = Watched(pipe.running_job, self.registry.all, blocked, ended)
        watch = watch_loop(self.block_warn, self.block_limit)
        watch.join(watched)
        self._watch = watch, watched

    def _terminate(self, task_ids: set[str]) -> None:
        if self._pipe is not None:
            self._pipe.terminate(task_ids)

    def _retire_for_memory(self) -> None:
        self.retired = "max_memory"
        if self._fetcher is not None:
            self._fetcher.retire()

    async def _drain(self) -> None:
        fetcher = self._fetcher
        while True:
            # retiring, the workers run what is still buffered: a woken one may not have taken
            # its message yet
            while self._running or (fetcher is not None and fetcher.spent and fetcher.buffer
                                    and not self._stop_requested):  # stopped: handed back
                self._idle.clear()
                if not self._running:
                    await asyncio.sleep(0)
                    continue
                await self._idle.wait()
            batches = self._batches.take_all()
            if not batches:
                if self._settler is not None:
                    await self._settler.wait_settled()
                return
            for handler, items in batches:
                await self._pipeline().run_batch(handler, items)

    def stop(self) -> None:
        """Ask the consumer to stop: no more fetching; running handlers may finish."""
        self._stop_requested = True
        if self._fetcher is not None:
            self._fetcher.stop()

    async def _finish(self, broker: Broker, acks: AckBatcher) -> None:
        try:
            await acks.flush()
            if self._settler is not None:
                await self._settler.abandon()  # what still waits for room is handed back
            returned = await broker.recover(self.consumer_id, force=True)
            if returned:
                log.info("returned %d unfinished message(s) to the queue", returned)
        except RETRYABLE_ERRORS as exc:
            log.warning("could not return in-flight messages (%s); another consumer will "
                        "recover them after the heartbeat timeout", exc)
        finally:
            await self._close_connection()

    async def _close_connection(self) -> None:
        if self._settler is not None:
            await self._settler.close()
        if self._broker is not None:
            await self._broker.close()
        if self._given_bus is None and self._redis is not None:
            await self._redis.aclose()

    async def _diverted(self, job_ids: list[str]) -> None:
        if self._settler is not None:
            await self._settler.diverted(job_ids, self.config.max_message_bytes)

    def _summary(self, now_ms: float) -> bytes:
        fetcher = self._fetcher
        return orjson.dumps({
            "consumer_id": self.consumer_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_ms": self._started_ms,
            "heartbeat_ms": now_ms,
            "concurrency": self.concurrency,
            "heartbeat_interval_s": self.config.heartbeat_interval,
            "running": self._running,
            "batched": len(self._batches),
            "processed": self.processed,
            "failed": self.failed,
            "retried": self.retried,
            "inflight_bytes": fetcher.held_bytes if fetcher else 0,
            "max_inflight_bytes": self.max_inflight_bytes,
            "largest_message_bytes": fetcher.largest if fetcher else 0,
            "loop_blocks": self._loop_blocks,
            "rate_waits": self._pipe.rates.waited if self._pipe else 0,
            "key_waits": self._pipe.keys_limits.waited if self._pipe else 0,
            "window_s": self._timings.window,
            "histogram": self._timings.histogram(),
        }, option=orjson.OPT_NON_STR_KEYS)

    def _pipeline(self) -> Pipeline:
        assert self._pipe is not None
        return self._pipe

    def _forget_acked(self, fields: list[int]) -> None:
        assert self._fetcher is not None
        self._fetcher.forget_many(fields)

    # ------------------------------------------------------------------ tasks

    async def _worker(self) -> None:
        assert self._fetcher is not None
        fetcher = self._fetcher
        process = self._pipeline().process
        take_nowait, me = fetcher.take_nowait, asyncio.current_task()
        while (item := take_nowait() or await fetcher.take()) is not None:
            field, raw, redelivery = item
            self._running += 1
            try:
                if redelivery is None or not redelivery.alone:
                    await process(field, raw, redelivery, me)
                else:
                    await self._run_alone(field, raw, redelivery)
            finally:
                self._running -= 1
                if self._alone_waiting:
                    self._running_changed.set()
                if not self._running:
                    self._idle.set()
            # An idle worker must not keep its last message alive while it waits for the next:
            # 20 idle workers kept 20 messages of 8 MB (160 MB) after they were settled.
            del item, raw

    async def _run_alone(self, field: int, raw: bytes, redelivery: Redelivery) -> None:
        """A message whose consumer died holding it runs with nothing else in flight, its
        predecessors' acks and its own flushed around it: if it kills this process too, only
        its own delivery count goes up."""
        assert self._fetcher is not None and self._acks is not None
        acks = self._acks
        try:
            self._alone_waiting = True
            while self._running > 1:
                self._running_changed.clear()
                await self._running_changed.wait()
            self._alone_waiting = False
            await until_done("ack", acks.flush, self._health)
            await self._pipeline().process(field, raw, redelivery)
            await until_done("ack", acks.flush, self._health)
        finally:
            self._fetcher.redelivery_settled()

    def _start_batch(self, handler: Handler, items: list[PendingEvent]) -> None:
        assert self._task_group is not None
        self._running += 1  # shutdown waits for it like for a worker
        self._task_group.start_soon(self._run_counted_batch, handler, items)

    async def _run_counted_batch(self, handler: Handler, items: list[PendingEvent]) -> None:
        try:
            await self._pipeline().run_batch(handler, items)
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    # ------------------------------------------------------------------ metrics and health

    def http_routes(self) -> dict[str, http.Route]:
        """``/healthz`` (alive, Redis reachable), ``/readyz`` (consuming), and ``/metrics``
        when metrics are on (``_endpoints.py``)."""
        return Endpoints(self).routes()

    def asgi_app(self) -> Any:
        """The same endpoints as an ASGI app, to mount in FastAPI/Starlette::

            app.mount("/consumer", consumer.asgi_app())
        """
        return http.asgi_app(self.http_routes())

    # The endpoints' read-only view of this consumer (``_endpoints.Probe``).

    @property
    def started(self) -> bool:
        return self._started.is_set()

    @property
    def broker(self) -> Broker | None:
        return self._broker

    @property
    def last_progress(self) -> float | None:
        return None if self._fetcher is None else self._fetcher.last_progress

    @property
    def metrics(self) -> Metrics | None:
        return self._metrics

    @property
    def refresh_interval(self) -> float:
        return self.config.heartbeat_interval

    async def stats(self) -> QueueStats:
        """The queue's ``EventBus.stats()``."""
        return await self.bus.stats()

    def loop_blocked(self) -> str | None:
        """Why the event loop makes this consumer not ready (a handler blocked it within
        ``ready_window``), or None."""
        return None if self._watch is None else self._watch[0].not_ready(self.ready_window)

    @property
    def ready_window(self) -> float:
        """How long the fetch loop may make no progress, with messages waiting, before
        ``/readyz`` says not ready."""
        return max(5.0, 4 * self.poll_interval)

    # Counters of this consumer's run (the queue-wide ones are in ``stats()``).

    @property
    def processed(self) -> int:
        return self._settler.processed if self._settler else 0

    @property
    def failed(self) -> int:
        return self._settler.failed if self._settler else 0

    @property
    def retried(self) -> int:
        return self._settler.retried if self._settler else 0

    @property
    def unhandled(self) -> int:
        return self._settler.unhandled if self._settler else 0

