"""Waiting on conditions with timeouts, never sleep-and-hope."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import orjson

from earnorm import Event, HandlerRegistry, LocalRedis, start_local_redis


def loads(raw: object) -> Any:
    """JSON from a Redis reply (bytes), failing the test plainly when the key was missing."""
    assert isinstance(raw, (bytes, str)), f"expected a JSON reply, got {raw!r}"
    return orjson.loads(raw)


@contextlib.contextmanager
def private_redis(*args: str) -> Iterator[LocalRedis]:
    """A server of the test's own, started with ``args`` (``"--maxmemory-policy",
    "noeviction"``), stopped after it."""
    server = start_local_redis(extra_args=args)
    try:
        yield server
    finally:
        server.stop()


async def wait_until(
    predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0, interval: float = 0.01,
    message: str = "condition",
) -> None:
    """Poll ``predicate`` (sync or async) until truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await anyio.sleep(interval)


async def waits_in_blmove(redis: Any, user: str | None = None) -> bool:
    """Whether a client (of ACL ``user``, when given) waits in its BLMOVE: a consumer idle in
    its blocking wait."""
    return any(c.get("cmd") == "blmove" and (user is None or c.get("user") == user)
               for c in await redis.client_list())


async def store_failed_job(bus: Any, name: str, failed_ms: float) -> str:
    """Put a failed job in ``bus``'s store as the consumer would, at a chosen failure time."""
    from earnorm import Event
    from earnorm.events._wire import decode as protocol
    from earnorm.events._wire.encode import encode_event
    from earnorm.events._wire.failures import FailureReason, failure_record

    event = Event(name=name, data={"n": failed_ms})
    raw = encode_event(event, bus.config.queue_name)
    record = failure_record(job_id=event.id, reason=FailureReason.NO_HANDLER, raw=raw,
                            now_ms=failed_ms, message=protocol.decode(raw), detail="nobody")
    await bus.broker.dead_letter(None, None, event.id, record, failed_ms)
    return event.id


def counting_registry(pattern: str, seen: Counter[str]) -> HandlerRegistry:
    """A registry whose one handler (for ``pattern``) counts each event id it runs."""
    registry = HandlerRegistry()

    async def count(event: Event) -> None:
        seen[event.id] += 1
    registry.register(pattern, count)
    return registry


def recording_registry(pattern: str, seen: list[int]) -> HandlerRegistry:
    """A registry whose one handler (for ``pattern``) records each event's ``data["i"]``."""
    registry = HandlerRegistry()

    async def record(event: Event) -> None:
        seen.append(event.data["i"])
    registry.register(pattern, record)
    return registry


def riding_out(queue: str, interval_start: float = 0.2) -> dict[str, Any]:
    """Config for a bus and consumer meant to ride out an outage or a failover: fast heartbeats,
    and a publish retry policy that keeps trying for well over ten seconds."""
    return {"queue_name": queue, "heartbeat_interval": 0.2, "heartbeat_timeout": 2.0,
            "retry_policy": {"max_retries": 30, "interval_start": interval_start,
                             "interval_step": interval_start, "interval_max": 1.0}}


class Seen:
    """What a periodic schedule's handler saw: each event id's count, tick times, catch-ups."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        self.ticks: list[str] = []
        self.catch_ups: list[dict[str, Any]] = []

    def registry(self, name: str) -> HandlerRegistry:
        registry = HandlerRegistry()

        async def handle(event: Event) -> None:
            self.ids[event.id] += 1
            if event.metadata.get("catch_up"):
                self.catch_ups.append(event.metadata)
            else:
                self.ticks.append(event.metadata["tick"])
        registry.register(name, handle)
        return registry
