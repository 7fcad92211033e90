"""Our bus -> a real Celery worker: the task receives exactly the data we sent."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from tests.helpers import wait_until
from tests.interop.celery_app import EVENT_TASKS
from tests.interop.harness import CeleryWorker, celery_worker

pytestmark = pytest.mark.anyio

DATA: dict[str, Any] = {
    "email": "zoë@example.com",
    "greeting": "こんにちは ✓ — ñ",
    "at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    "day": date(2026, 1, 2),
    "amount": Decimal("12.50"),
    "ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "blob": b"\x00\xff binary",
    "text_bytes": b"plain",
    "nested": {"items": [1, 2.5, None, True, {"deep": ["x", Decimal("-0.001")]}], "empty": {}},
}
CASES = [("json", None), ("msgpack", None), ("json", "zlib"), ("msgpack", "zlib")]


def by_id(worker: CeleryWorker) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in worker.records()}


async def received(worker: CeleryWorker, ids: list[str], timeout: float = 20) -> dict[str, Any]:
    await wait_until(lambda: set(ids) <= by_id(worker).keys(), timeout,
                     message=f"celery worker to run {len(ids)} event(s)")
    return by_id(worker)


def expect_exact(record: dict[str, Any], event: Event, serializer: str) -> None:
    """JSON: the task got the very Python values. msgpack: kombu's msgpack has no type hook,
    so the task got kombu tags, which kombu's JSON round trip restores exactly."""
    assert record["task"] == event.name
    assert record["kwargs_repr"] == "{}"
    assert record["restored_repr"] == repr([[event.data], {}])
    if serializer == "json":
        assert record["args_repr"] == repr([event.data])
    else:
        assert "{'__type__': 'datetime'" in record["args_repr"] or "at" not in event.data


@pytest.fixture
async def bus_for(
    redis_url: str, worker_queue: str
) -> AsyncIterator[Callable[..., Any]]:
    buses: list[EventBus] = []

    async def make(**config: Any) -> EventBus:
        bus = await EventBus.connect(redis_url, {"queue_name": worker_queue, **config})
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


@pytest.mark.parametrize(("serializer", "compression"), CASES)
async def test_publish_reaches_celery_task_with_exact_data(
    solo_worker: CeleryWorker, bus_for: Callable[..., Any], serializer: str,
    compression: str | None,
) -> None:
    bus = await bus_for(serializer=serializer, compression=compression)
    event = Event(name="user.created", data=DATA, metadata={"source": "interop"})
    await bus.publish(event)
    record = (await received(solo_worker, [event.id]))[event.id]
    expect_exact(record, event, serializer)
    assert record["retries"] == 0 and record["eta"] is None


@pytest.mark.parametrize(("serializer", "compression"), CASES[:2])
async def test_publish_batch_reaches_celery_each_event_once(
    solo_worker: CeleryWorker, bus_for: Callable[..., Any], serializer: str,
    compression: str | None,
) -> None:
    bus = await bus_for(serializer=serializer, compression=compression)
    events = [
        Event(name=EVENT_TASKS[i % 3], data={**DATA, "n": i, "name": f"ünïcode-{i}"})
        for i in range(30)
    ]
    await bus.publish_batch(events)
    records = await received(solo_worker, [e.id for e in events])
    for event in events:
        expect_exact(records[event.id], event, serializer)
    assert sum(r["id"] in {e.id for e in events} for r in solo_worker.records()) == 30


@pytest.mark.parametrize("priority", [0, 5, 9])
async def test_prioritised_event_reaches_celery(
    solo_worker: CeleryWorker, bus_for: Callable[..., Any], priority: int
) -> None:
    bus = await bus_for()
    event = Event(name="order.placed", data={"p": priority})
    await bus.publish(event, priority=priority)
    record = (await received(solo_worker, [event.id]))[event.id]
    assert record["priority"] == priority


async def test_delayed_event_in_eta_mode_runs_no_earlier_than_the_delay(
    solo_worker: CeleryWorker, bus_for: Callable[..., Any]
) -> None:
    bus = await bus_for(delay_mode="eta")
    event = Event(name="user.updated", data={"late": True})
    delay = 2.0
    sent_at = time.time()
    await bus.publish(event, delay=delay)
    record = (await received(solo_worker, [event.id], timeout=delay + 20))[event.id]
    # 50 ms covers the bus's measured offset to Redis's clock, which stamps the eta.
    assert record["ran_at"] >= sent_at + delay - 0.05
    assert datetime.fromisoformat(record["eta"]).timestamp() >= sent_at + delay - 0.05
    assert record["args_repr"] == repr([event.data])


async def test_delayed_batch_in_eta_mode_runs_on_celery(
    solo_worker: CeleryWorker, bus_for: Callable[..., Any]
) -> None:
    bus = await bus_for(delay_mode="eta", serializer="msgpack")
    events = [Event(name="user.updated", data={"i": i}) for i in range(5)]
    sent_at = time.time()
    await bus.publish_batch(events, delay=1.0)
    records = await received(solo_worker, [e.id for e in events], timeout=20)
    assert min(records[e.id]["ran_at"] for e in events) >= sent_at + 1.0 - 0.05


async def test_delayed_event_in_redis_mode_waits_in_the_delayed_set(
    solo_worker: CeleryWorker, bus_for: Callable[..., Any], worker_queue: str, redis_url: str
) -> None:
    """The default mode is durable but only EarnORM consumers promote ``Q:delayed``: on a queue
    that only Celery workers consume, use ``delay_mode="eta"``."""
    bus = await bus_for()
    event = Event(name="user.updated", data={})
    await bus.publish(event, delay=3600)
    client = Redis.from_url(redis_url)
    try:
        assert await client.zcard(f"{worker_queue}:delayed") == 1
        assert await client.llen(worker_queue) == 0
        await client.delete(f"{worker_queue}:delayed")
    finally:
        await client.aclose()


async def test_celery_self_retry_reaches_our_consumer_through_the_delayed_set(
    solo_worker: CeleryWorker, redis_url: str, worker_queue: str, queue_name: str,
    redis: Redis,
) -> None:
    """A Celery task that raises ``self.retry(countdown=1, queue=ours)``: the retry message
    Celery publishes is held in our delayed set, then handled on time with retries=1."""
    from tests.interop.celery_app import make_app

    handled: list[tuple[Event, float]] = []
    registry = HandlerRegistry()

    async def on_retried(event: Event) -> None:
        handled.append((event, time.time()))

    registry.register("user.retried", on_retried)
    app = make_app(redis_url, worker_queue)
    try:
        result = app.send_task("user.retried", args=[{"n": 1}],
                               kwargs={"forward_to": queue_name})
    finally:
        app.close()
    await wait_until(lambda: redis.llen(queue_name), 20, message="Celery's retry message")
    async with Consumer(redis_url, queue_name=queue_name, registry=registry, concurrency=2):
        await wait_until(lambda: handled, 20, message="the retried event")
    (event, ran_at), = handled
    assert (event.id, event.retries) == (result.id, 1)
    assert event.data == {"args": [{"n": 1}], "kwargs": {"forward_to": queue_name}}
    first = next(r for r in solo_worker.records() if r["id"] == result.id)
    assert first["retries"] == 0
    assert ran_at >= first["ran_at"] + 1.0 - 0.05


async def test_prefork_worker_runs_each_published_event_once(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    with celery_worker(redis_url, queue_name, pool="prefork", concurrency=2) as worker:
        bus = await EventBus.connect(redis_url, {"queue_name": queue_name})
        try:
            events = [Event(name="order.placed", data={**DATA, "i": i}) for i in range(40)]
            await bus.publish_batch(events[:20])
            for event in events[20:]:
                await bus.publish(event)
        finally:
            await bus.close()
        records = await received(worker, [e.id for e in events], timeout=30)
        assert len(worker.records()) == 40
        for event in events:
            expect_exact(records[event.id], event, "json")
        assert worker.process.pid not in {r["pid"] for r in records.values()}
