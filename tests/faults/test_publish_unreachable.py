"""Publishing while Redis is down: retries on the policy's schedule, then a clear
``PublishError``; and a batch is one MULTI/EXEC, so it lands whole or not at all."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError

from earnorm import Event, EventBus, start_local_redis
from earnorm._errors import PublishError

pytestmark = pytest.mark.anyio

POLICY = {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.1, "interval_max": 1}


async def test_publish_to_a_stopped_redis_retries_then_raises_publish_error_naming_the_cause(
    queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_local_redis(extra_args=("--requirepass", "pw-not-in-errors"))
    url = f"redis://:pw-not-in-errors@127.0.0.1:{server.port}/0"
    try:
        bus = await EventBus.connect(url, {"queue_name": queue_name, "retry_policy": POLICY})
        server.kill()
        caplog.set_level(logging.WARNING, logger="earnorm.events")
        pushes = count_calls(bus.broker, "push")
        started = time.monotonic()
        with pytest.raises(PublishError) as raised:
            await bus.publish(Event(name="order.placed", data={"id": 1}))
        elapsed = time.monotonic() - started
        retries = [r for r in caplog.records if "publish failed" in r.getMessage()]
        with pytest.raises(PublishError):
            await bus.publish_batch([Event(name="order.placed") for _ in range(10)])
        server = start_local_redis(server.port, extra_args=("--requirepass", "pw-not-in-errors"))
        check = Redis.from_url(url)
        await anyio.sleep(0.3)  # a late retry would land now
        assert await check.llen(queue_name) == 0, "nothing written once Redis is back"
        await check.aclose()
        await bus.close()
    finally:
        server.kill()
    error = str(raised.value)
    assert "failed after 4 attempt(s)" in error
    assert pushes == [1, 1, 1, 1], "max_retries=3: four attempts in all, as the error says"
    assert "ConnectionError" in error and str(server.port) in error
    assert "pw-not-in-errors" not in error and ":***@" in error
    assert isinstance(raised.value.__cause__, RedisConnectionError)
    assert len(retries) == 3  # the policy's max_retries, then the error
    assert elapsed >= 0.1 + 0.2 + 0.3  # interval_start + n * interval_step, n = 0..2
    assert not any("pw-not-in-errors" in r.getMessage() for r in caplog.records)


def count_calls(target: object, name: str) -> list[int]:
    """Record each call of one of our own methods (the Redis underneath stays real)."""
    calls: list[int] = []
    original = getattr(target, name)

    async def counted(*args: object) -> object:
        calls.append(1)
        return await original(*args)

    setattr(target, name, counted)
    return calls


async def test_batch_cut_off_by_a_redis_crash_lands_whole_or_not_at_all(
    tmp_path: Path, queue_name: str
) -> None:
    """A batch of 20,000 is one MULTI ... EXEC: Redis runs nothing until EXEC arrives, and the
    append-only file (fsync always) replays a transaction whole or drops it. So a crash at any
    moment of sending it leaves all or none."""
    size, rng, outcomes = 20_000, random.Random(), []
    events = [Event(name="order.placed", data={"i": i, "pad": "x" * 200}) for i in range(size)]
    workdir = str(tmp_path)
    extra = ("--appendfsync", "always")
    server = start_local_redis(appendonly=True, workdir=workdir, extra_args=extra)
    no_retry = {"queue_name": queue_name, "retry_policy": {"max_retries": 0}}
    try:
        bus = await EventBus.connect(server.url, no_retry)
        started = time.monotonic()
        await bus.publish_batch(events)
        duration = time.monotonic() - started
        await bus.close()
        for _ in range(4):
            check = Redis.from_url(server.url)
            await check.delete(queue_name)
            await check.aclose()
            bus = await EventBus.connect(server.url, no_retry)
            raised = False

            async def publish(bus: EventBus = bus) -> None:
                nonlocal raised
                try:
                    await bus.publish_batch(events)
                except PublishError:
                    raised = True

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish)
                await anyio.sleep(rng.uniform(0, duration))
                server.kill()
            await bus.close()
            server = start_local_redis(
                server.port, appendonly=True, workdir=workdir, extra_args=extra
            )
            check = Redis.from_url(server.url)
            landed = await check.llen(queue_name)
            await check.aclose()
            outcomes.append((raised, landed))
            assert landed in (0, size), f"half-written batch: {landed} of {size}"
            if not raised:
                assert landed == size, "a batch that returned is all there"
    finally:
        server.kill()
    print(f"\nbatch cut off by a crash (raised PublishError, messages landed): {outcomes}")


async def test_publish_refused_by_a_full_redis_raises_publish_error_and_writes_nothing(
    queue_name: str,
) -> None:
    """Out of memory (maxmemory with noeviction): Redis is reached but refuses the write. That is
    not retried; the batch's MULTI is discarded whole."""
    server = start_local_redis(extra_args=("--maxmemory-policy", "noeviction"))
    try:
        bus = await EventBus.connect(server.url, queue_name=queue_name)
        await bus.redis.set(f"{queue_name}:ballast", "x" * 512 * 1024)
        used = int((await bus.redis.info("memory"))["used_memory"])
        await bus.redis.config_set("maxmemory", used - 128 * 1024)  # now over the limit
        refused = r"refused the publish: OutOfMemoryError.*maxmemory"
        with pytest.raises(PublishError, match=refused) as raised:
            await bus.publish_batch([Event(name="order.placed") for _ in range(100)])
        assert isinstance(raised.value.__cause__, OutOfMemoryError)
        before = await lpush_calls(bus.redis)
        with pytest.raises(PublishError, match=refused):
            await bus.publish(Event(name="order.placed"))
        assert await lpush_calls(bus.redis) == before + 1, "a refused write is sent once"
        await bus.redis.delete(f"{queue_name}:ballast")
        assert await bus.redis.llen(queue_name) == 0
        await bus.close()
    finally:
        server.kill()


async def lpush_calls(redis: Redis) -> int:
    """LPUSHes the server received, refused ones included (INFO commandstats)."""
    stats = (await redis.info("commandstats")).get("cmdstat_lpush", {})
    return int(stats.get("calls", 0)) + int(stats.get("rejected_calls", 0))
