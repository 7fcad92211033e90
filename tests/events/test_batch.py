"""Batch handlers: flushed when full or on timeout, retried event by event, never acked early."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry, event_handler
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

RETRY_ONCE = {"max_retries": 1, "interval_start": 0.05, "interval_step": 0}


@pytest.fixture
def bus_config() -> dict[str, Any]:
    return {"retry_policy": RETRY_ONCE}


def metrics(n: int, **extra: object) -> list[Event]:
    return [Event(name="metrics.recorded", data={"i": i, **extra}) for i in range(n)]


async def held(redis: Redis, queue_name: str, consumer: Consumer) -> int:
    return int(await redis.hlen(f"{queue_name}:inflight:{consumer.consumer_id}"))


async def test_a_full_batch_is_flushed_at_once(bus: EventBus) -> None:
    batches: list[list[int]] = []
    registry = HandlerRegistry()

    @event_handler("metrics.recorded", registry=registry, batch_size=5, batch_timeout=30)
    async def store(events: list[Event]) -> None:
        batches.append([e.data["i"] for e in events])

    async with Consumer(bus=bus, registry=registry) as consumer:
        started = time.monotonic()
        await bus.publish_batch(metrics(10))
        await wait_until(lambda: len(batches) == 2, 10, message="two full batches")
        assert time.monotonic() - started < 5  # not the 30 s timeout
        await wait_until(lambda: consumer.processed == 10, 10)
    assert sorted(i for batch in batches for i in batch) == list(range(10))
    assert all(len(b) == 5 for b in batches)


async def test_a_partial_batch_is_flushed_when_its_timeout_passes(bus: EventBus) -> None:
    calls: list[tuple[float, int]] = []
    registry = HandlerRegistry()

    async def store(events: list[Event]) -> None:
        calls.append((time.monotonic(), len(events)))

    registry.register("metrics.recorded", store, batch_size=100, batch_timeout=0.4)
    async with Consumer(bus=bus, registry=registry):
        published = time.monotonic()
        await bus.publish_batch(metrics(3))
        await wait_until(lambda: calls, 10, message="the timed flush")
    [(at, size)] = calls
    assert size == 3
    assert 0.35 <= at - published < 1.5


async def test_events_in_an_open_batch_are_not_acked_until_it_ran(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    received: list[int] = []
    registry = HandlerRegistry()

    async def store(events: list[Event]) -> None:
        received.extend(e.data["i"] for e in events)

    registry.register("metrics.recorded", store, batch_size=100, batch_timeout=60)
    async with Consumer(bus=bus, registry=registry) as consumer:
        await bus.publish_batch(metrics(3))
        await wait_until(lambda: len(consumer._batches) == 3, 10, message="3 events batched")
        assert await held(redis, queue_name, consumer) == 3
        assert received == []
    # Stopping flushed the open batch; then everything was acked.
    assert sorted(received) == [0, 1, 2]
    assert consumer.processed == 3
    assert await redis.exists(f"{queue_name}:inflight:{consumer.consumer_id}") == 0
    assert await redis.llen(queue_name) == 0


async def test_a_batch_that_cannot_finish_at_shutdown_goes_back_to_the_queue(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    registry = HandlerRegistry()

    async def stuck(events: list[Event]) -> None:
        await anyio.sleep(60)

    registry.register("metrics.recorded", stuck, batch_size=100, batch_timeout=60)
    consumer = Consumer(bus=bus, registry=registry, shutdown_timeout=0.3)
    async with consumer:
        await bus.publish_batch(metrics(4))
        await wait_until(lambda: len(consumer._batches) == 4, 10, message="4 events batched")
    assert await redis.llen(queue_name) == 4
    assert consumer.processed == 0


async def test_a_failing_batch_is_retried_event_by_event(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    calls: list[list[int]] = []
    stored: list[int] = []
    registry = HandlerRegistry()

    async def store(events: list[Event]) -> None:
        calls.append([e.data["i"] for e in events])
        if any(e.data["i"] == 2 for e in events):
            raise ValueError("event 2 is poison")
        stored.extend(e.data["i"] for e in events)

    registry.register("metrics.recorded", store, batch_size=4, batch_timeout=0.3)
    async with Consumer(bus=bus, registry=registry) as consumer:
        ids = await bus.publish_batch(metrics(4))
        await wait_until(lambda: redis.hexists(f"{queue_name}:failed", ids[2]), 10)
        await wait_until(lambda: consumer.processed == 3, 10)
    # The full batch, then each event alone; event 2's retry then comes alone (timed flush).
    assert calls[0] == [0, 1, 2, 3]
    assert sorted(calls[1:5]) == [[0], [1], [2], [3]]
    assert calls[5:] == [[2]]
    assert sorted(stored) == [0, 1, 3]
    jobs = await bus.get_failed_jobs()
    assert [j["job_id"] for j in jobs] == [ids[2]]
    assert jobs[0]["attempts"] == 2
    assert jobs[0]["handlers"] == [f"{store.__module__}.{store.__qualname__}"]


async def test_an_event_with_a_plain_and_a_batch_handler_retries_only_the_failed_one(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    plain_runs: list[str] = []
    batch_runs: list[list[str]] = []
    registry = HandlerRegistry()

    async def audit(event: Event) -> None:
        plain_runs.append(event.id)

    async def store(events: list[Event]) -> None:
        batch_runs.append([e.id for e in events])
        if len(batch_runs) == 1:
            raise ConnectionError("warehouse down")

    registry.register("metrics.recorded", audit)
    registry.register("metrics.recorded", store, batch_size=1)
    async with Consumer(bus=bus, registry=registry) as consumer:
        [job_id] = await bus.publish_batch(metrics(1))
        await wait_until(lambda: len(batch_runs) == 2, 10, message="the batch handler's retry")
        await wait_until(lambda: consumer.processed == 1, 10)
    assert plain_runs == [job_id]  # not run again on the retry
    assert batch_runs == [[job_id], [job_id]]
    assert await bus.get_failed_jobs() == []
