"""Several queues in one process: one ``Consumer`` per queue on one shared Redis client.

Each queue keeps everything a queue has (its own heartbeat, in-flight hash, priority lists,
retries, dead letters): only the connection pool and the process are shared. The handler slots
(``concurrency``) are split by weight, so a flood on one queue never takes the slots of another
(the isolation Celery users get by running a worker per queue), at the price of idle slots on a
quiet queue. One HTTP server serves the whole group: ``/healthz`` and ``/readyz`` answer for all
queues (the first failing one says which), ``/metrics`` merges the queues' metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anyio

from earnorm._config import EventConfig
from earnorm._errors import EarnORMError
from earnorm.events._bus import EventBus
from earnorm.events._handlers import HandlerRegistry
from earnorm.events._telemetry import http
from earnorm.events.consumer._background import RunsInBackground
from earnorm.events.consumer._consumer import Consumer


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


def parse_queue(spec: str) -> tuple[str, int]:
    """``name`` or ``name=weight`` (the weight a positive integer).

    >>> parse_queue("orders"), parse_queue("mail=3")
    (('orders', 1), ('mail', 3))
    """
    name, sep, weight = spec.rpartition("=")
    if not sep:
        return spec, 1
    if not name or not weight.isdigit() or int(weight) < 1:
        raise EarnORMError(f"a queue is NAME or NAME=WEIGHT (a positive integer), got {spec!r}")
    return name, int(weight)


def split_slots(weights: Sequence[int], concurrency: int) -> list[int]:
    """Handler slots per queue, in proportion to ``weights``, at least one each.

    >>> split_slots([1, 1], 100), split_slots([3, 1], 100), split_slots([1, 1, 1], 2)
    ([50, 50], [75, 25], [1, 1, 1])
    """
    total = sum(weights)
    slots = [max(1, concurrency * w // total) for w in weights]
    spare = concurrency - sum(slots)
    for i in sorted(range(len(weights)), key=lambda i: -weights[i]):
        if spare <= 0:
            break
        slots[i] += 1
        spare -= 1
    return slots


class ConsumerGroup(RunsInBackground):
    """Consume several queues in one process::

        async with ConsumerGroup("redis://localhost:6379/0", queues=["orders=3", "mail"],
                                 concurrency=100):
            ...  # orders gets 75 handler slots, mail 25

    ``consumer_options`` go to every ``Consumer`` (``config``, ``registry``,
    ``shutdown_timeout``, ``celery_events``, ...).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        queues: Sequence[str | tuple[str, int]],
        bus: EventBus | None = None,
        config: EventConfig | Mapping[str, Any] | None = None,
        registry: HandlerRegistry | None = None,
        concurrency: int = 100,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        **consumer_options: Any,
    ) -> None:
        if not queues:
            raise EarnORMError("ConsumerGroup needs at least one queue")
        specs = [parse_queue(q) if isinstance(q, str) else q for q in queues]
        names = [name for name, _ in specs]
        if len(set(names)) != len(names):
            raise EarnORMError(f"a queue is named twice: {names}")
        if concurrency < len(specs):
            raise EarnORMError(f"concurrency {concurrency} is less than one slot per queue")
        if bus is None and redis_url is None:
            raise EarnORMError("ConsumerGroup needs redis_url= or bus=")
        self.redis_url = redis_url or (bus.url if bus else "")
        self._given_bus = bus
        self._config = config
        self._registry = registry
        self._options = consumer_options
        self.queues = specs
        self.slots = split_slots([w for _, w in specs], concurrency)
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.consumers: list[Consumer] = []
        self._stop_requested = False
        self._started = asyncio.Event()
        self._background: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Run every queue's consumer until ``stop()``; a queue whose consumer fails to start
        stops the others and raises its error."""
        bus = self._given_bus
        owned = bus is None
        if bus is None:
            bus = await EventBus.connect(self.redis_url, EventConfig.from_dict(self._config))
        metrics = self.metrics_port is not None or bool(self._options.pop("metrics", False))
        try:
            schedules = self._options.pop("schedules", None)
            self.consumers = [
                Consumer(bus=bus, config=self._config,
                         queue_name=name, registry=self._registry, concurrency=slots,
                         metrics=metrics, **self._options,
                         # periodic events fire into the first queue only
                         schedules=schedules if i == 0 else [])
                for i, ((name, _), slots) in enumerate(zip(self.queues, self.slots,
                                                            strict=True))
            ]
            if self._stop_requested:
                return
            try:
                async with anyio.create_task_group() as outer:
                    async with anyio.create_task_group() as inner:
                        for consumer in self.consumers:
                            inner.start_soon(self._run_one, consumer)
                        await self._wait_all_started()
                        if self.metrics_port is not None:
                            outer.start_soon(http.serve, self.http_routes(), self.metrics_host,
                                             self.metrics_port)
                        self._started.set()
                    outer.cancel_scope.cancel()
            except BaseExceptionGroup as group:  # one queue's start-up error, as itself
                errors = _leaves(group)
                raise errors[0] if len(errors) == 1 else group from None
        finally:
            if owned:
                await bus.close()

    async def _run_one(self, consumer: Consumer) -> None:
        try:
            await consumer.run()
        except BaseException:
            self.stop()
            raise

    async def _wait_all_started(self) -> None:
        for consumer in self.consumers:
            await consumer.wait_started()

    def stop(self) -> None:
        self._stop_requested = True
        for consumer in self.consumers:
            consumer.stop()

    def __iter__(self) -> Iterator[Consumer]:
        return iter(self.consumers)

    @property
    def processed(self) -> int:
        return sum(c.processed for c in self.consumers)

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.consumers)

    @property
    def retried(self) -> int:
        return sum(c.retried for c in self.consumers)

    @property
    def unhandled(self) -> int:
        return sum(c.unhandled for c in self.consumers)

    # ------------------------------------------------------------------ HTTP

    def http_routes(self) -> dict[str, http.Route]:
        routes = [c.http_routes() for c in self.consumers]

        def every(path: str) -> http.Route:
            async def answer() -> http.Response:
                last: http.Response = (200, "text/plain", b"ok\n")
                for consumer, table in zip(self.consumers, routes, strict=True):
                    status, kind, body = await table[path]()
                    if status != 200:
                        queue = consumer.config.queue_name.encode()
                        return status, kind, b"queue " + queue + b": " + body
                    last = (status, kind, body)
                return last
            return answer

        out: dict[str, http.Route] = {"/healthz": every("/healthz"), "/readyz": every("/readyz")}
        if all("/metrics" in table for table in routes):
            out["/metrics"] = self._metrics_page
        return out

    async def _metrics_page(self) -> http.Response:
        from earnorm.events._telemetry.metrics import merged_exposition

        body, content_type = merged_exposition(
            [c._metrics for c in self.consumers if c._metrics is not None])
        return 200, content_type, body
