"""One message's way through a consumer: decode, decide, run, settle.

``Pipeline`` is built once per run, when the consumer knows which optional stages are on, and
composes them then: the run stage is the plain call of the handlers, wrapped in a tracing span
only when OpenTelemetry is configured; an ``observer`` (Celery task events, Prometheus
counters) is there only when one of them is on. A message on the common path (decoded, one
handler, success, nothing to carry on) pays for no stage that is off: no span, no observer
call, no outcome object. Every outcome goes through ``settle``, the one place it is observed
(``TaskEvents.settled``) before the ``Settler`` does its Redis side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, field
from typing import Any

from earnorm._config import EventConfig
from earnorm._errors import EarnORMError, MessageDecodeError, UnsupportedProtocol
from earnorm.events._broker.broker import Redelivery
from earnorm.events._broker.idempotency import DoneMarks
from earnorm.events._broker.keys import Keys
from earnorm.events._concurrency import KeyLimit
from earnorm.events._handlers import Handler, HandlerRegistry
from earnorm.events._telemetry import tracing
from earnorm.events._telemetry.timings import ProcessingTimes
from earnorm.events._wire import decode as protocol
from earnorm.events._wire.canvas import has_follow_ups
from earnorm.events._wire.clock import ServerClock
from earnorm.events._wire.event import Event
from earnorm.events._wire.failures import FailureReason
from earnorm.events.consumer import _decide as decide
from earnorm.events.consumer._batch import Batches, PendingEvent, run_batch
from earnorm.events.consumer._calls import (
    NO_LIMITS,
    UNSET_TIMELIMIT,
    Limits,
    call_handler,
    failed,
    message_limits,
    plain,
    run_handlers,
)
from earnorm.events.consumer._keylimits import KeyLimits, Lease
from earnorm.events.consumer._progress import ProgressReporter
from earnorm.events.consumer._rates import RateLimits
from earnorm.events.consumer._settle import Settler
from earnorm.events.consumer._task_events import TaskEvents


@dataclass(slots=True, eq=False)
class _Route:
    """What a first attempt of an event name needs, worked out once per name (and again when
    its handlers change): the hot path reads attributes instead of asking four helpers."""

    handlers: tuple[Handler, ...]  # the registry's tuple it was worked out for
    now: tuple[Handler, ...]  # run at once
    batched: tuple[Handler, ...]  # batch handlers
    interval: int  # rate limit: microseconds between two events (0: none)
    key_limit: KeyLimit | None  # per-key concurrency
    direct: Handler | None  # the lone plain handler, called without run_handlers' loop
# the run stage: (handlers, event, message, limits) -> (failures, the last success's result)
RunStage = Callable[[tuple[Handler, ...], Event, protocol.Message, Limits],
                    Awaitable[tuple[decide.Failures, Any]]]


@dataclass(eq=False)
class Pipeline:
    config: EventConfig
    registry: HandlerRegistry
    clock: ServerClock
    keys: Keys
    settler: Settler
    batches: Batches
    timings: ProcessingTimes
    done: DoneMarks | None  # idempotent handlers' marks
    observer: TaskEvents | None  # Celery task events and/or Prometheus counters, when on
    tracer: Any  # OpenTelemetry's, when configured
    rates: RateLimits  # rate limits across the fleet (consumer._rates)
    keys_limits: KeyLimits  # per-key concurrency across the fleet (consumer._keylimits)
    revoked: Container[str] = frozenset()  # task ids not to run (consumer._revocations)
    progress: ProgressReporter | None = None  # event.progress() reports (consumer._progress)
    _routes: dict[str, _Route] = field(default_factory=dict)
    # task id -> the task running its handlers, the event name and the message's hard time
    # limit (for terminate, and for the loop watch naming a blocked job); ids whose
    # cancellation is a terminate
    _running: dict[str, tuple[asyncio.Task[Any], str, float | None]] = field(
        default_factory=dict)
    _terminating: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        done = self.done

        def run(handlers: tuple[Handler, ...], event: Event, message: protocol.Message,
                limits: Limits) -> Awaitable[tuple[decide.Failures, Any]]:
            return run_handlers(handlers, event, done, limits)  # no coroutine of its own

        self.run: RunStage = run if self.tracer is None else _traced(self.tracer, self.config, run)

    # ------------------------------------------------------------------ stages

    def decode(self, raw: bytes) -> protocol.Message | decide.DeadLetter:
        try:
            return protocol.decode(raw, self.config.max_message_bytes)
        except UnsupportedProtocol as exc:
            return decide.DeadLetter(FailureReason.UNSUPPORTED_PROTOCOL, str(exc),
                                     job_id=exc.task_id, name=exc.task)
        except MessageDecodeError as exc:
            return decide.DeadLetter(FailureReason.UNDECODABLE, str(exc),
                                     job_id=exc.task_id, name=exc.task)

    def _route(self, name: str, handlers: tuple[Handler, ...]) -> _Route:
        """Work out and keep the route of ``name``'s first attempts (``process`` looks it up
        and comes here when there is none for these handlers)."""
        now, batched = _split(handlers)
        direct = now[0] if len(now) == 1 and plain(now[0]) and self.tracer is None else None
        route = self._routes[name] = _Route(
            handlers, now, batched, self.rates.interval(name, handlers),
            self.keys_limits.limit(name, handlers), direct)
        return route

    async def settle(self, field: int, raw: bytes, message: protocol.Message | None,
                     outcome: decide.Outcome, failures: decide.Failures | None = None) -> None:
        """Where every outcome is observed, then settled in Redis."""
        if self.observer is not None:
            self.observer.settled(message, outcome, failures or [])
        await self.settler.apply(field, raw, message, outcome)

    def terminate(self, task_ids: set[str]) -> None:
        """Cancel the handlers running for these task ids (a revoke with terminate=True)."""
        for task_id in task_ids:
            running = self._running.get(task_id)
            if running is not None and task_id not in self._terminating:
                self._terminating.add(task_id)
                running[0].cancel()

    @property
    def running_ids(self) -> Container[str]:
        """The job ids whose handlers run now (batch handlers' jobs aside)."""
        return self._running

    def running_job(self, task: asyncio.Task[Any]) -> tuple[str, str, float | None] | None:
        """(job id, event name, the message's hard limit) of the job ``task`` runs, if any.
        Called from the loop watch's thread while the loop is blocked: reads a copy."""
        for _ in range(3):
            try:
                entries = list(self._running.items())
            except RuntimeError:  # changed while copied: the loop is not blocked after all
                continue
            for job_id, (running, event, hard) in entries:
                if running is task:
                    return job_id, event, hard
            return None
        return None

    # ------------------------------------------------------------------ one message

    async def process(self, field: int, raw: bytes, redelivery: Redelivery | None = None,
                      task: asyncio.Task[Any] | None = None) -> None:
        """Decode, decide, run and settle one message. ``task``: the caller's own (a worker
        passes it once instead of looking it up per message)."""
        if redelivery is not None:
            limit = decide.delivery_limit(redelivery.deliveries, redelivery.died_holding,
                                          self.config)
            if limit is not None:
                await self.settle(field, raw, _decode_or_none(raw), limit)
                return
        message = self.decode(raw)
        if isinstance(message, decide.DeadLetter):
            await self.settle(field, raw, None, message)
            return
        if message.id in self.revoked:
            await self.settle(field, raw, message, decide.Revoked())
            return
        name = message.task
        handlers = self.registry.handlers_for(name)
        if not handlers or message.expires is not None or message.eta is not None:
            early = decide.before_running(message, handlers, self.clock.now_ms(), self.keys,
                                          self.config)
            if early is not None:
                await self.settle(field, raw, message, early)
                return
        route = self._routes.get(name)
        if route is None or route.handlers is not handlers:
            route = self._route(name, handlers)
        if route.interval:
            wait = await self.rates.wait(message, route.interval)
            if wait is not None:  # its slot is later: it waits for it in Redis
                await self.settle(field, raw, message, wait)
                return
        headers = message.headers
        if protocol.H_PENDING in headers:  # a retry runs only the handlers still pending
            now, batched = _split(decide.handlers_to_run(message, handlers))
        else:
            now, batched = route.now, route.batched
        try:
            event = message.to_event()
        except EarnORMError as exc:
            await self.settle(field, raw, message,
                              decide.DeadLetter(FailureReason.UNDECODABLE, str(exc)))
            return
        lease: Lease | None = None
        if route.key_limit is not None:
            got = await self.keys_limits.acquire(field, message, event, route.key_limit)
            if got is None:  # it waits in Redis for a slot of its key
                return
            if isinstance(got, decide.DeadLetter):
                await self.settle(field, raw, message, got)
                return
            lease = got
        try:
            failures: decide.Failures = []
            result = None
            observer = self.observer if not batched else None
            if observer is not None:
                observer.started(message)
            if now:
                timelimit = headers.get("timelimit")  # the unset one without message_limits
                limits = (NO_LIMITS if timelimit is None or timelimit == UNSET_TIMELIMIT
                          else message_limits(timelimit))
                started = time.perf_counter()
                running = self._running
                running[message.id] = (task or asyncio.current_task(),  # type: ignore[assignment]
                                       name, limits[1])
                try:
                    direct = route.direct
                    if direct is not None and now is route.now and limits is NO_LIMITS:
                        try:  # the hot path: one plain handler, called as it is
                            result = await direct.func(event)
                        except Exception as exc:
                            failures = [failed(direct, event, exc)]
                    else:
                        failures, result = await self.run(now, event, message, limits)
                except asyncio.CancelledError:
                    if message.id not in self._terminating:
                        raise
                    self._terminating.discard(message.id)
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    await self.settle(field, raw, message, decide.Revoked("terminated"))
                    return
                finally:
                    running.pop(message.id, None)
                    if (reporter := self.progress) is not None and reporter.live:
                        reporter.ended(message.id)
                self.timings.record(time.perf_counter() - started)
            if batched:
                item = PendingEvent(field, raw, message, event, failures, len(batched))
                alone = redelivery is not None and redelivery.alone  # no wait in a batch
                for handler in batched:
                    full = [item] if alone else self.batches.add(handler, item)
                    if full is not None:
                        await self.run_batch(handler, full)
            elif failures:
                await self.settle(field, raw, message, decide.after_running(
                    message, failures, self.config.retry_policy, self.clock.now_ms(), self.keys),
                    failures)
            # Settler.carries_on, inlined: calling it, and message_limits above for the unset
            # header, measured 3-5% slower on a no-op drain (two 8-pair A/Bs)
            elif observer is not None or self.settler.stores_results or has_follow_ups(message):
                await self.settle(field, raw, message, decide.Ack(result))
            else:  # the hot path: no outcome object, no extra await
                self.settler.ack_handled(field)
        finally:  # no cost unless a slot was taken (a try is free in 3.11)
            if lease is not None:
                await self.keys_limits.release(lease)

    async def run_batch(self, handler: Handler, items: list[PendingEvent]) -> None:
        items = await self._drop_revoked(items)
        if not items:
            return
        started = time.perf_counter()
        await run_batch(handler, items, call_handler)
        share = (time.perf_counter() - started) / len(items)
        for item in items:
            self.timings.record(share)
            item.waiting -= 1
            if not item.waiting:
                outcome = decide.after_running(
                    item.message, item.failures, self.config.retry_policy,
                    self.clock.now_ms(), self.keys)
                await self.settle(item.field, item.raw, item.message, outcome, item.failures)


    async def _drop_revoked(self, items: list[PendingEvent]) -> list[PendingEvent]:
        """Events revoked while they waited for their batch: settled REVOKED (once, however
        many batch handlers each waited for) instead of run."""
        revoked = self.revoked
        if not any(item.message.id in revoked for item in items):
            return items
        live = []
        for item in items:
            if item.message.id not in revoked:
                live.append(item)
            elif item.waiting:
                item.waiting = 0
                await self.settle(item.field, item.raw, item.message, decide.Revoked())
        return live


def _split(handlers: tuple[Handler, ...]) -> tuple[tuple[Handler, ...], tuple[Handler, ...]]:
    """(the handlers run at once, the batch handlers)."""
    return (tuple(h for h in handlers if h.batch_size is None),
            tuple(h for h in handlers if h.batch_size is not None))


def _traced(tracer: Any, config: EventConfig, run: RunStage) -> RunStage:
    """The run stage inside a CONSUMER span, as opentelemetry-instrumentation-celery makes."""

    async def traced(handlers: tuple[Handler, ...], event: Event, message: protocol.Message,
                     limits: Limits) -> tuple[decide.Failures, Any]:
        span = tracing.consumer_span(tracer, message.task, message.id, message.headers,
                                     message.properties, config.queue_name, message.retries)
        try:
            with tracing.current(span):
                failures, result = await run(handlers, event, message, limits)
            for _, failure in failures:
                tracing.failed(span, failure.error,
                               retrying=message.retries < config.retry_policy.max_retries)
        finally:
            span.end()
        return failures, result

    return traced


def _decode_or_none(raw: bytes) -> protocol.Message | None:
    try:
        return protocol.decode(raw)
    except MessageDecodeError:
        return None
