"""Hung handlers: a timeout fires; a live consumer keeps its in-flight work however long a
handler awaits (heartbeats run on the same loop, beside it); a killed consumer's work is
recovered by a live one within ``heartbeat_timeout + heartbeat_interval``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from tests.faults.workers import Worker, recorded
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

INTERVAL, TIMEOUT = 0.2, 1.0


async def test_hung_handler_times_out_and_the_consumer_goes_on(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    fine: list[str] = []
    registry = HandlerRegistry()

    async def hangs(event: Event) -> None:
        await anyio.sleep_forever()

    async def on_fine(event: Event) -> None:
        fine.append(event.id)

    registry.register("fault.hang", hangs, timeout=0.3, retry_policy={"max_retries": 0})
    registry.register("fault.fine", on_fine)
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    async with Consumer(bus=bus, registry=registry, concurrency=4):
        started = time.monotonic()
        hung = await bus.publish(Event(name="fault.hang"))
        await bus.publish_batch([Event(name="fault.fine") for _ in range(50)])
        await wait_until(lambda: len(fine) == 50, 10, message="others run meanwhile")
        await wait_until(lambda: redis.hexists(f"{queue_name}:failed", hung), 10)
        elapsed = time.monotonic() - started
    job = await bus.get_failed_job(hung)
    await bus.close()
    assert job["reason"] == "handler_error"
    assert job["error_type"] in ("TimeoutError", "HandlerTimeout"), job
    assert 0.3 <= elapsed < 2.0


@asynccontextmanager
async def _hung_holder(
    redis_url: str, queue: str, record: Path, redis: Redis
) -> AsyncIterator[tuple[Worker, Worker, str]]:
    """Consumer A starts an event whose handler then awaits 4 s; consumer B runs beside it."""
    env = {"EARNORM_TEST_HANDLER_SLEEP": "4", "EARNORM_TEST_RECORD_STARTS": "1"}
    bus = await EventBus.connect(redis_url, queue_name=queue)
    holder = Worker(redis_url, queue, record, heartbeat=(INTERVAL, TIMEOUT), env=env)
    other: Worker | None = None
    try:
        event_id = await bus.publish(Event(name="fault.recorded"))
        await wait_until(lambda: recorded(record, "start"), 20, message="A started the event")
        other = Worker(redis_url, queue, record, heartbeat=(INTERVAL, TIMEOUT), env=env)

        async def both_live() -> bool:
            return await redis.zcard(f"{queue}:consumers") == 2

        await wait_until(both_live, 20, message="B is live")
        yield holder, other, event_id
    finally:
        holder.kill()
        if other is not None:
            other.kill()
        await bus.close()


def _starts(record: Path) -> list[tuple[str, int]]:
    lines = [line.split() for line in record.read_text().splitlines()]
    return [(parts[1], int(parts[2])) for parts in lines if parts[0] == "start"]


async def test_live_consumer_keeps_work_its_hung_handler_holds(
    redis_url: str, queue_name: str, redis: Redis, record: Path
) -> None:
    async with _hung_holder(redis_url, queue_name, record, redis) as (holder, _, event_id):
        await wait_until(lambda: recorded(record)[event_id], 10, message="A finishes")
        await anyio.sleep(2 * TIMEOUT)  # B, had it taken the event, would have started it
    assert _starts(record) == [(event_id, holder.pid)], "run once, by the consumer holding it"
    assert recorded(record) == {event_id: 1}


async def test_killed_consumers_work_is_recovered_within_timeout_plus_interval(
    redis_url: str, queue_name: str, redis: Redis, record: Path
) -> None:
    async with _hung_holder(redis_url, queue_name, record, redis) as (holder, other, event_id):
        await anyio.sleep(2 * TIMEOUT)  # well past the timeout: A is alive, so it keeps it
        assert len(_starts(record)) == 1
        holder.kill()
        killed_at = time.monotonic()
        await wait_until(lambda: len(_starts(record)) == 2, 10, message="B recovers the event")
        recovered_after = time.monotonic() - killed_at
    print(f"\nhung handler: killed consumer's event restarted by another after "
          f"{recovered_after:.2f}s (documented bound {TIMEOUT + INTERVAL:.1f}s)")
    assert _starts(record)[1] == (event_id, other.pid)
    # A's last heartbeat was at most one interval before the kill; B looks once per interval.
    assert TIMEOUT - INTERVAL - 0.05 <= recovered_after <= TIMEOUT + INTERVAL + 0.5
