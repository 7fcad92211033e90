"""Redis at ``maxmemory`` with ``noeviction``: refused writes are back-pressure, not fatal. A
running consumer keeps fetching and acking (which frees memory) and retries what was refused; a
consumer started on a full Redis drains it."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry, LocalRedis
from tests.helpers import private_redis, wait_until

pytestmark = pytest.mark.anyio

EVENTS = 2000
FAST = {"max_retries": 3, "interval_start": 0.05, "interval_step": 0.05, "interval_max": 0.2}


@pytest.fixture
def full_redis() -> Iterator[LocalRedis]:
    with private_redis("--maxmemory-policy", "noeviction") as server:
        yield server


async def fill(server: LocalRedis, redis: Redis, queue: str,
               flaky: Callable[[int], bool] = lambda i: i % 10 == 0,
               ) -> tuple[EventBus, list[str]]:
    """Queue EVENTS events (``flaky`` ones, every tenth by default, fail once), then lower
    maxmemory below what is used."""
    bus = await EventBus.connect(server.url, {"queue_name": queue, "retry_policy": FAST})
    ids: list[str] = []
    for start in range(0, EVENTS, 500):
        ids += await bus.publish_batch(
            [Event(name="full.work", data={"i": i, "flaky": flaky(i), "pad": "x" * 800})
             for i in range(start, start + 500)])
    used = int((await redis.info("memory"))["used_memory"])
    await redis.config_set("maxmemory", used - 64 * 1024)
    return bus, ids


def registry_for(
    handled: Counter[str], attempts: Counter[str], gate: asyncio.Event | None = None
) -> HandlerRegistry:
    registry = HandlerRegistry()

    async def work(event: Event) -> None:
        if gate is not None:
            await gate.wait()
        attempts[event.id] += 1
        if event.data["flaky"] and event.retries == 0:
            raise RuntimeError("fails once: its retry is a write a full Redis refuses")
        handled[event.id] += 1

    registry.register("full.work", work)
    return registry


async def is_full(redis: Redis) -> bool:
    try:
        await redis.set("full:probe", "x")
    except Exception as exc:
        return "maxmemory" in str(exc)
    await redis.delete("full:probe")
    return False


async def drained(redis: Redis, queue: str, handled: Counter[str]) -> bool:
    inflight = [k async for k in redis.scan_iter(match=f"{queue}:inflight:*")]
    return (len(handled) == EVENTS and await redis.llen(queue) == 0
            and await redis.zcard(f"{queue}:delayed") == 0 and not inflight)


async def test_a_consumer_started_on_a_full_redis_drains_it(
    full_redis: LocalRedis, caplog: pytest.LogCaptureFixture
) -> None:
    redis = Redis(port=full_redis.port)
    queue = "full:start"
    bus, ids = await fill(full_redis, redis, queue)
    assert await is_full(redis), "the server refuses writes before the consumer starts"
    handled: Counter[str] = Counter()
    attempts: Counter[str] = Counter()
    caplog.set_level(logging.WARNING, logger="earnorm.consumer")
    async with Consumer(bus=bus, registry=registry_for(handled, attempts), concurrency=20):
        await wait_until(lambda: drained(redis, queue, handled), 60, interval=0.05,
                         message="the full queue drained")
    assert set(handled) == set(ids)
    assert sum(1 for i in attempts.values() if i == 2) == EVENTS // 10, "each flaky one retried"
    stats = await bus.stats()
    assert stats["counters"]["processed"] == EVENTS
    assert stats["counters"]["retried"] == EVENTS // 10
    refusals = [r for r in caplog.records if "refusing writes" in r.getMessage()]
    print(f"\nstarted on a full Redis: {EVENTS} events drained, {len(refusals)} "
          "'refusing writes' line(s) logged")
    assert refusals, "the back-pressure is said"
    assert len(refusals) < 20, "one line per state change, not one per refused write"
    await bus.close()
    await redis.aclose()


async def test_failures_as_many_as_the_workers_do_not_stop_a_consumer_at_maxmemory(
    full_redis: LocalRedis,
) -> None:
    """The first events all fail once and Redis refuses their retries: were the workers to wait
    for room, three of them would wait forever (nothing else would ack, so nothing would free
    memory). The refused settles wait apart; the workers go on and their acks make room."""
    redis = Redis(port=full_redis.port)
    queue = "full:failures"
    bus, ids = await fill(full_redis, redis, queue, flaky=lambda i: i < 12)
    assert await is_full(redis)
    handled: Counter[str] = Counter()
    attempts: Counter[str] = Counter()
    async with Consumer(bus=bus, registry=registry_for(handled, attempts), concurrency=3):
        await wait_until(lambda: drained(redis, queue, handled), 60, interval=0.05,
                         message=f"the queue drained ({len(handled)} handled)")
    assert set(handled) == set(ids)
    assert sum(1 for i in attempts.values() if i == 2) == 12
    await bus.close()
    await redis.aclose()


async def test_a_running_consumer_keeps_going_when_redis_fills_up(
    full_redis: LocalRedis, caplog: pytest.LogCaptureFixture
) -> None:
    redis = Redis(port=full_redis.port)
    queue = "full:running"
    handled: Counter[str] = Counter()
    attempts: Counter[str] = Counter()
    bus = await EventBus.connect(full_redis.url, {"queue_name": queue, "retry_policy": FAST})
    caplog.set_level(logging.WARNING, logger="earnorm.consumer")
    gate = asyncio.Event()  # handlers wait until Redis is full under the running consumer
    async with Consumer(bus=bus, registry=registry_for(handled, attempts, gate),
                        concurrency=20) as consumer:
        publisher, ids = await fill(full_redis, redis, queue)
        assert await is_full(redis)
        gate.set()
        await wait_until(lambda: drained(redis, queue, handled), 60, interval=0.05,
                         message="the queue drained at maxmemory")
        assert consumer.processed == EVENTS
    assert set(handled) == set(ids)
    assert sum(1 for i in attempts.values() if i == 2) == EVENTS // 10
    refusals = [r for r in caplog.records if "refusing writes" in r.getMessage()]
    assert refusals and len(refusals) < 20
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await publisher.close()
    await bus.close()
    await redis.aclose()
