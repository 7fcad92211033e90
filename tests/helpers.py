"""Waiting on conditions with timeouts, never sleep-and-hope."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson


def loads(raw: object) -> Any:
    """JSON from a Redis reply (bytes), failing the test plainly when the key was missing."""
    assert isinstance(raw, (bytes, str)), f"expected a JSON reply, got {raw!r}"
    return orjson.loads(raw)


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


async def store_failed_job(bus: Any, name: str, failed_ms: float) -> str:
    """Put a failed job in ``bus``'s store as the consumer would, at a chosen failure time."""
    from earnorm import Event
    from earnorm.events import _protocol as protocol
    from earnorm.events._encode import encode_event
    from earnorm.events._failures import FailureReason, failure_record

    event = Event(name=name, data={"n": failed_ms})
    raw = encode_event(event, bus.config.queue_name)
    record = failure_record(job_id=event.id, reason=FailureReason.NO_HANDLER, raw=raw,
                            now_ms=failed_ms, message=protocol.decode(raw), detail="nobody")
    await bus.broker.dead_letter(None, None, event.id, record, failed_ms)
    return event.id
