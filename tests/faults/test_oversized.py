"""A 50 MB message on the queue never reaches the consumer: the fetch diverts it to the failed
store inside Redis (a small record; the message kept aside), whether it was waiting when the
consumer started or arrived while the consumer was idle on its blocking wait."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from earnorm import Event, EventBus
from earnorm.events._broker.keys import text
from tests.faults.workers import Worker, recorded
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

SIZE = 50 * 1024 * 1024
MB = 1024 * 1024


def huge_message(queue: str) -> tuple[str, bytes]:
    task_id = str(uuid.uuid4())
    envelope = {
        "body": "A" * SIZE, "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"lang": "py", "task": "fault.recorded", "id": task_id},
        "properties": {"body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
                       "delivery_info": {"exchange": "", "routing_key": queue}},
    }
    return task_id, orjson.dumps(envelope)


async def test_a_50_mb_message_never_reaches_the_consumer(
    redis_url: str, queue_name: str, redis: Redis, record: Path
) -> None:
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    waiting_id, waiting = huge_message(queue_name)
    await redis.lpush(queue_name, waiting)  # on the queue before the consumer starts
    small = await bus.publish_batch([Event(name="fault.recorded") for _ in range(5)])
    worker = Worker(redis_url, queue_name, record)
    try:
        await wait_until(lambda: len(recorded(record)) == 5, 30, message="the small ones")
        await wait_until(lambda: redis.hexists(f"{queue_name}:failed", waiting_id), 10)
        idle_id, idle = huge_message(queue_name)
        await redis.lpush(queue_name, idle)  # arrives while the consumer blocks, idle
        await wait_until(lambda: redis.hexists(f"{queue_name}:failed", idle_id), 10,
                         message="the one that arrived while idle diverted")
        after = await bus.publish(Event(name="fault.recorded"))
        await wait_until(lambda: after in recorded(record), 10, message="still consuming")
        peak = worker.peak_rss_bytes()
        assert worker.alive(), worker.output()
    finally:
        worker.kill()
    jobs = {job_id: await bus.get_failed_job(job_id) for job_id in (waiting_id, idle_id)}
    record_sizes = [await redis.hstrlen(f"{queue_name}:failed", j) for j in jobs]
    print(f"\n50 MB message: consumer peak RSS {peak / MB:.1f} MB, failed records "
          f"{max(record_sizes)} bytes, message kept aside in Redis")
    assert peak < 120 * MB
    assert max(record_sizes) < MB
    for job_id, job in jobs.items():
        assert job["reason"] == "too_large" and job.get("size") == len(waiting)
        assert job["name"] == "fault.recorded"
        kept = await redis.lrange(f"{queue_name}:aside:{job_id}", 0, -1)
        assert kept == [waiting if job_id == waiting_id else idle]
    assert {text(m) for m in await redis.smembers(f"{queue_name}:aside")} == set(jobs)
    assert set(recorded(record)) == {*small, after}
    # Nothing lost: an operator can put it back (here it would be diverted again).
    await bus.retry_job(waiting_id)
    assert await redis.llen(queue_name) == 1
    assert not await redis.exists(f"{queue_name}:aside:{waiting_id}")
    assert await redis.smembers(f"{queue_name}:aside") == {idle_id.encode()}
    await bus.remove_job(idle_id)
    assert not await redis.exists(f"{queue_name}:aside:{idle_id}", f"{queue_name}:aside")
    await bus.close()
