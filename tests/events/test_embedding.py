"""The consumer inside an application's own event loop."""

from __future__ import annotations

import anyio
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


async def test_consumer_runs_next_to_other_tasks_and_stops_on_cancellation(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    handled: list[int] = []
    ticks = 0
    registry = HandlerRegistry()

    async def on_tick(event: Event) -> None:
        handled.append(event.data["i"])

    registry.register("app.tick", on_tick)
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    consumer = Consumer(bus=bus, registry=registry)

    async def other_work() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_work)
        tg.start_soon(consumer.run)
        await consumer.wait_started()
        await bus.publish_batch([Event(name="app.tick", data={"i": i}) for i in range(100)])
        await wait_until(lambda: len(handled) == 100, 10, message="100 handled")
        tg.cancel_scope.cancel()
    assert ticks > 0
    assert sorted(handled) == list(range(100))
    assert await redis.zcard(f"{queue_name}:consumers") == 0, "a cancelled consumer deregisters"
    assert not [k async for k in redis.scan_iter(match=f"{queue_name}:inflight:*")]
    await bus.close()


async def test_cancelled_mid_handler_message_is_returned_not_lost(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    started = anyio.Event()
    registry = HandlerRegistry()

    async def slow(event: Event) -> None:
        started.set()
        await anyio.sleep(60)

    registry.register("app.slow", slow)
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    consumer = Consumer(bus=bus, registry=registry, shutdown_timeout=0.2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        event_id = await bus.publish(Event(name="app.slow"))
        with anyio.fail_after(10):
            await started.wait()
        consumer.stop()
    [raw] = await redis.lrange(queue_name, 0, -1)
    assert event_id.encode() in raw
    await bus.close()


async def test_prefetch_of_one_keeps_fetching(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    handled: list[int] = []
    registry = HandlerRegistry()

    async def on_tick(event: Event) -> None:
        handled.append(event.data["i"])

    registry.register("app.tick", on_tick)
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    async with Consumer(bus=bus, registry=registry, concurrency=1, prefetch=1):
        await bus.publish_batch([Event(name="app.tick", data={"i": i}) for i in range(20)])
        await wait_until(lambda: len(handled) == 20, 10, message="20 handled one at a time")
    assert handled == list(range(20))
    await bus.close()


async def test_consumer_given_a_bus_and_another_queue_consumes_logs_and_reports_that_queue(
    redis_url: str, queue_name: str, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """One source of truth: ``queue_name`` wins over the bus's queue everywhere."""
    billing = f"{queue_name}:billing"
    handled: list[str] = []
    registry = HandlerRegistry()

    async def record(event: Event) -> None:
        handled.append(event.data["queue"])

    registry.register("invoice.sent", record)
    orders_bus = await EventBus.connect(redis_url, queue_name=queue_name)
    billing_bus = await EventBus.connect(redis_url, queue_name=billing)
    await orders_bus.publish(Event(name="invoice.sent", data={"queue": "orders"}))
    await billing_bus.publish(Event(name="invoice.sent", data={"queue": "billing"}))
    caplog.set_level("INFO", logger="earnorm.consumer")
    try:
        async with Consumer(bus=orders_bus, queue_name=billing, registry=registry) as consumer:
            await wait_until(lambda: handled, 5, message="the billing event")
            assert consumer.config.queue_name == billing
            assert consumer.bus.config.queue_name == billing
            stats = await consumer.bus.stats()
            assert stats["queue"] == billing
            assert [c["id"] for c in stats["consumers"]] == [consumer.consumer_id]
        assert handled == ["billing"]
        assert await redis.llen(queue_name) == 1, "the orders event is left for its consumers"
        assert f"queue={billing} " in caplog.text
        assert await redis.zcard(f"{queue_name}:consumers") == 0
    finally:
        await redis.delete(*[k async for k in redis.scan_iter(match=f"{billing}*")])
        await orders_bus.close()
        await billing_bus.close()
