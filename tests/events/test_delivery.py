"""Delivery guarantees on a real Redis: delays, two consumers, restarts, SIGTERM, SIGKILL."""

from __future__ import annotations

import signal
import time

import anyio
import anyio.lowlevel
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from tests.helpers import wait_until
from tests.processes import consumer_process, start_consumer, stop

pytestmark = pytest.mark.anyio


async def _handled_counts(redis: Redis, queue: str) -> dict[bytes, int]:
    raw = await redis.hgetall(f"{queue}:handled")
    return {k if isinstance(k, bytes) else k.encode(): int(v) for k, v in raw.items()}


async def test_delay_runs_no_earlier_than_due_and_promptly(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    ran_at: list[float] = []
    registry = HandlerRegistry()

    async def on_reminder(event: Event) -> None:
        ran_at.append(time.time())

    registry.register("user.reminder", on_reminder)
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    async with Consumer(bus=bus, registry=registry):
        sent_at = time.time()
        await bus.publish(Event(name="user.reminder", data={}), delay=2)
        assert await redis.zcard(f"{queue_name}:delayed") == 1
        await wait_until(lambda: ran_at, 5, message="delayed handler")
    await bus.close()
    assert 2.0 <= ran_at[0] - sent_at <= 2.5


async def test_many_close_due_times_none_runs_before_it_is_due(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    """The promoter wakes a moment before each due time and asks again until it is due:
    every event still runs at or after its due time (by Redis's clock, which here is this
    machine's: the tolerance is the bus's bound on its own clock estimate)."""
    ran: list[tuple[float, float]] = []
    registry = HandlerRegistry()

    async def on_due(event: Event) -> None:
        ran.append((time.time(), event.data["due"]))

    registry.register("user.reminder", on_due)
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    async with Consumer(bus=bus, registry=registry):
        start = time.time() + 0.3
        for i in range(200):
            due = start + i * 0.003
            await bus.publish(Event(name="user.reminder", data={"due": due}),
                              delay=due - time.time())
        await wait_until(lambda: len(ran) == 200, 10, message="200 delayed handlers")
    tolerance = bus.clock.uncertainty_ms / 1000 + 0.0001
    await bus.close()
    early = [due - at for at, due in ran if at < due - tolerance]
    assert not early, f"{len(early)} ran before due, by up to {max(early) * 1000:.2f} ms"


async def test_delayed_event_survives_restart_of_only_consumer(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    with consumer_process(redis_url, queue_name) as first:
        await wait_until(lambda: redis.zcard(f"{queue_name}:consumers"), 20, message="start")
        sent_at = time.time()
        event_id = await bus.publish(Event(name="test.counted", data={}), delay=2)
        stop(first, signal.SIGTERM)
    # Nothing is running while the event waits: it lives only in Redis.
    assert await redis.zcard(f"{queue_name}:delayed") == 1
    with consumer_process(redis_url, queue_name):
        await wait_until(
            lambda: redis.hexists(f"{queue_name}:handled", event_id), 20, message="handled"
        )
    assert time.time() - sent_at >= 2.0
    assert await _handled_counts(redis, queue_name) == {event_id.encode(): 1}
    await bus.close()


async def test_ten_thousand_events_two_consumers_each_handled_exactly_once(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    counts: dict[str, int] = {}
    by_consumer = [0, 0]
    registries = [HandlerRegistry(), HandlerRegistry()]
    for n, registry in enumerate(registries):

        async def handle(event: Event, n: int = n) -> None:
            counts[event.id] = counts.get(event.id, 0) + 1
            by_consumer[n] += 1
            await anyio.lowlevel.checkpoint()

        registry.register("load.tick", handle, name=f"tick-{n}")
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    events = [Event(name="load.tick", data={"i": i}) for i in range(10_000)]
    async with (
        Consumer(bus=bus, registry=registries[0], concurrency=20, prefetch=100),
        Consumer(bus=bus, registry=registries[1], concurrency=20, prefetch=100),
    ):
        for start in range(0, len(events), 500):
            await bus.publish_batch(events[start : start + 500])
        await wait_until(lambda: len(counts) == 10_000, 60, message="10,000 handled")
    await bus.close()
    assert set(counts) == {e.id for e in events}
    assert set(counts.values()) == {1}
    assert all(by_consumer), f"both consumers must take part: {by_consumer}"


async def test_sigterm_during_burst_loses_nothing(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    ids = await bus.publish_batch(
        [Event(name="test.counted", data={"i": i}) for i in range(3_000)]
    )
    process = start_consumer(
        redis_url, queue_name, concurrency=20,
        extra_env={"EARNORM_TEST_HANDLER_SLEEP": "0.002"},
    )
    try:
        await wait_until(
            lambda: redis.hlen(f"{queue_name}:handled"), 20, message="first events handled"
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        stop(process)
    handled = await _handled_counts(redis, queue_name)
    queued = await redis.llen(queue_name)
    inflight = [k async for k in redis.scan_iter(match=f"{queue_name}:inflight:*")]
    assert inflight == [], "a graceful stop hands every held message back"
    assert 0 < len(handled) < len(ids), "the stop must land mid-burst"
    assert set(handled.values()) == {1}, "nothing runs twice on a graceful stop"
    assert len(handled) + queued == len(ids)
    await bus.close()


async def test_sigkilled_consumer_work_is_recovered_by_a_live_one(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    config = {"queue_name": queue_name, "heartbeat_interval": 0.2, "heartbeat_timeout": 1.0}
    bus = await EventBus.connect(redis_url, config)
    ids = await bus.publish_batch(
        [Event(name="test.counted", data={"i": i}) for i in range(500)]
    )
    victim = start_consumer(
        redis_url, queue_name, concurrency=10,
        extra_env={"EARNORM_TEST_HANDLER_SLEEP": "0.05", "EARNORM_HEARTBEAT_TIMEOUT": "1.0",
                   "EARNORM_HEARTBEAT_INTERVAL": "0.2"},
    )
    try:
        await wait_until(lambda: redis.hlen(f"{queue_name}:handled"), 20, message="started")
        stop(victim, signal.SIGKILL)
    finally:
        stop(victim)
    held = [k async for k in redis.scan_iter(match=f"{queue_name}:inflight:*")]
    assert held, "the killed consumer left messages in flight"
    handled: set[str] = set()
    registry = HandlerRegistry()

    async def on_counted(event: Event) -> None:
        handled.add(event.id)

    registry.register("test.counted", on_counted)
    before = set(await _handled_counts(redis, queue_name))
    async with Consumer(bus=bus, registry=registry, concurrency=50):
        await wait_until(
            lambda: len(handled | {b.decode() for b in before}) == len(ids), 20,
            message="every event handled by someone",
        )
    assert not [k async for k in redis.scan_iter(match=f"{queue_name}:inflight:*")]
    await bus.close()
