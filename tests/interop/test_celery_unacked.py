"""A Celery worker SIGKILLed in a mixed fleet leaves what it held in Celery's ``unacked`` store;
once Celery's visibility timeout passes, EarnORM consumers restore those messages to the queue
and run them, as a Celery worker's own sweep would."""

from __future__ import annotations

import os
import signal
from collections import Counter

import orjson
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from tests.helpers import wait_until
from tests.interop.harness import celery_worker

pytestmark = pytest.mark.anyio

PUBLISHED = 6  # prefork, 2 children, prefetch multiplier 2: two run, four are reserved


async def _held_by_celery(redis: Redis, queue: str) -> set[str]:
    entries = await redis.hvals("unacked")
    return {orjson.loads(e)[0]["headers"]["id"] for e in entries if orjson.loads(e)[2] == queue}


async def test_a_sigkilled_celery_workers_unacked_messages_run_on_our_consumers(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    """Celery acks a task before it runs (acks_late off, its default): what a killed worker
    was running is Celery's loss by design; what it had reserved sits in ``unacked``."""
    bus = await EventBus.connect(redis_url, queue_name=queue_name, celery_visibility_timeout=2,
                                 heartbeat_interval=0.2, heartbeat_timeout=1)
    with celery_worker(redis_url, queue_name, pool="prefork", concurrency=2,
                       prefetch_multiplier=2) as worker:
        ids = await bus.publish_batch([Event(name="fleet.slow", data={"i": i})
                                       for i in range(PUBLISHED)])
        await wait_until(lambda: worker.count() == 2, 20, message="two running")

        async def all_taken() -> bool:
            held = await _held_by_celery(redis, queue_name)
            return await redis.llen(queue_name) == 0 and len(held) == PUBLISHED - 2

        await wait_until(all_taken, 20, message="the rest reserved in unacked")
        held = await _held_by_celery(redis, queue_name)
        running = {r["id"] for r in worker.records()}
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(10)
    stats = await bus.stats()
    assert stats["celery_unacked"] >= len(held)
    ran: Counter[str] = Counter()
    registry = HandlerRegistry()

    async def on_slow(event: Event) -> None:
        ran[event.id] += 1

    registry.register("fleet.slow", on_slow)
    expected = set(ids) - running
    assert held == expected
    async with Consumer(bus=bus, registry=registry):
        await wait_until(lambda: set(ran) == expected, 20,
                         message="the restored and the queued messages run")
    print(f"\nCelery worker SIGKILLed: {len(held)} restored from its unacked store after the "
          "visibility timeout; each ran once on our consumer")
    assert ran == Counter({i: 1 for i in expected})
    assert await _held_by_celery(redis, queue_name) == set()
    await bus.close()
