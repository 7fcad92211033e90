"""One Celery worker and one EarnORM consumer on the same queue, events from both sides."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from tests.helpers import wait_until
from tests.interop.celery_app import make_app
from tests.interop.harness import CeleryWorker

pytestmark = pytest.mark.anyio

TOTAL = 5000


def send_from_celery(redis_url: str, queue: str, count: int) -> list[str]:
    app = make_app(redis_url, queue)
    try:
        return [str(app.send_task("fleet.event", args=[{"from": "celery", "i": i}]).id)
                for i in range(count)]
    finally:
        app.close()


async def _no_unacked(client: Redis) -> bool:
    return await client.hlen("unacked") == 0


async def test_every_event_is_handled_exactly_once_by_one_of_them(
    solo_worker: CeleryWorker, redis_url: str, worker_queue: str,
) -> None:
    ours: list[str] = []
    registry = HandlerRegistry()

    async def on_fleet(event: Event) -> None:
        ours.append(event.id)

    registry.register("fleet.event", on_fleet)
    bus = await EventBus.connect(redis_url, {"queue_name": worker_queue})
    published: list[str] = []
    try:
        async with Consumer(bus=bus, registry=registry, concurrency=8):
            events = [Event(name="fleet.event", data={"from": "earnorm", "i": i})
                      for i in range(TOTAL // 2)]
            for start in range(0, len(events), 500):
                published += await bus.publish_batch(events[start:start + 500])
            published += await anyio.to_thread.run_sync(
                send_from_celery, redis_url, worker_queue, TOTAL - len(published))

            await wait_until(lambda: len(ours) + solo_worker.count() >= TOTAL, 120,
                             interval=0.1, message=f"{TOTAL} events handled")
            client = Redis.from_url(redis_url)
            try:  # nothing left anywhere that could still be delivered a second time
                assert await client.llen(worker_queue) == 0
                assert await client.zcard(f"{worker_queue}:delayed") == 0
                await wait_until(lambda: _no_unacked(client), 10, message="Celery's last ack")
            finally:
                await client.aclose()
    finally:
        await bus.close()
    theirs = [r["id"] for r in solo_worker.records() if r["task"] == "fleet.event"]
    counts = Counter(ours + theirs)
    assert len(published) == TOTAL == len(set(published))
    assert set(counts) == set(published)
    assert [i for i, n in counts.items() if n > 1] == []
    assert ours and theirs, (len(ours), len(theirs))
    print(f"mixed fleet: EarnORM handled {len(ours)}, Celery handled {len(theirs)}")
