"""A handler that kills its own process (``os._exit``, as a segfault or the OOM killer would) for
one event: that event is dead-lettered after ``max_deliveries``, naming the consumers that died
holding it, and every other event is handled; the re-runs the crashes cause stay bounded.

The test is the supervisor: it starts a new consumer process each time one dies.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from earnorm import Event, EventBus
from tests.faults.workers import Worker, recorded
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

GOOD = 300
MAX_DELIVERIES = 4
CONCURRENCY = 10  # prefetch 20: what a crash can take with it


async def test_a_handler_that_kills_its_process_dead_letters_after_max_deliveries(
    redis_url: str, queue_name: str, redis: Redis, record: Path
) -> None:
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    ids = await bus.publish_batch([Event(name="fault.recorded", data={"i": i})
                                   for i in range(GOOD // 2)])
    poison = await bus.publish(Event(name="fault.poison"))
    ids += await bus.publish_batch([Event(name="fault.recorded", data={"i": i})
                                    for i in range(GOOD // 2, GOOD)])
    env = {"EARNORM_TEST_HANDLER_SLEEP": "0.01", "EARNORM_TEST_RECORD_STARTS": "1",
           "EARNORM_MAX_DELIVERIES": str(MAX_DELIVERIES)}
    workers: list[Worker] = []
    started = time.monotonic()
    deadline = started + 90
    try:
        while not await redis.hexists(f"{queue_name}:failed", poison):
            assert time.monotonic() < deadline, "the poison event was never dead-lettered"
            assert len(workers) <= MAX_DELIVERIES + 2, "consumers keep dying"
            worker = Worker(redis_url, queue_name, record, concurrency=CONCURRENCY, env=env)
            workers.append(worker)

            async def died_or_done(w: Worker = worker) -> bool:
                return not w.alive() or (
                    len(recorded(record)) >= GOOD
                    and bool(await redis.hexists(f"{queue_name}:failed", poison)))

            await wait_until(died_or_done, 60, interval=0.05,
                             message="the consumer dying, or the queue handled")
            if worker.alive():
                break
        await wait_until(lambda: len(recorded(record)) == GOOD, 60, interval=0.1,
                         message="every good event handled")
        job = await bus.get_failed_job(poison)
    finally:
        for worker in workers:
            worker.kill()
    died = [w for w in workers if not w.alive() and w.process.returncode == 70]
    runs = recorded(record, "start")[poison]
    handled = recorded(record)
    reruns = sum(n - 1 for i, n in handled.items() if i in ids)
    print(f"\npoison: ran {runs} times, {len(died)} consumers died, dead-lettered after "
          f"{time.monotonic() - started:.1f}s; {GOOD} others handled, {reruns} re-runs "
          f"(most runs of one: {max(handled.values())})")
    assert job["reason"] == "delivery_limit"
    assert job.get("deliveries") == MAX_DELIVERIES + 1
    assert len(job.get("died_holding", [])) == MAX_DELIVERIES
    assert f"max_deliveries={MAX_DELIVERIES}" in job["detail"]
    assert runs == MAX_DELIVERIES, "it ran once per delivery, then never again"
    assert len(died) == MAX_DELIVERIES
    assert set(handled) == set(ids), "every other event was handled"
    # A crash re-runs at most what its consumer held (prefetch); after two deaths a message
    # runs alone, so the good ones are in at most the first two crashes' in-flight sets.
    assert reruns <= 2 * 2 * CONCURRENCY
    assert max(handled.values()) <= 3
    assert await redis.hlen(f"{queue_name}:failed") == 1
    assert await redis.llen(f"{queue_name}:recovered") == 0
    await bus.close()

