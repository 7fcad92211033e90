"""Refuse to run where Redis may drop data silently, and say when it may have: an evicting
``maxmemory-policy``, a server that refuses ``CONFIG GET``, a restart with persistence off, and
delays so far away that a message would wait forever."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Iterator

import anyio
import orjson
import pytest
from redis.asyncio import Redis

import earnorm
from earnorm import (
    ConfigError,
    Consumer,
    Event,
    EventBus,
    EventValidationError,
    HandlerRegistry,
    LocalRedis,
    start_local_redis,
)
from tests.events.test_malformed import envelope
from tests.helpers import private_redis, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def lru_redis() -> Iterator[LocalRedis]:
    with private_redis("--maxmemory-policy", "allkeys-lru") as server:
        yield server


async def test_an_evicting_policy_is_refused_at_init_and_at_consumer_start(
    lru_redis: LocalRedis, queue_name: str
) -> None:
    with pytest.raises(ConfigError, match="maxmemory-policy is 'allkeys-lru'") as at_init:
        await earnorm.init(redis_uri=lru_redis.url, event_config={"queue_name": queue_name})
    assert "allow_eviction" in str(at_init.value)
    assert not earnorm.event_bus
    with pytest.raises(ConfigError, match="allkeys-lru"):
        await Consumer(lru_redis.url, queue_name=queue_name, registry=HandlerRegistry()).run()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "EARNORM_REDIS_URI")}
    result = await anyio.run_process(
        [sys.executable, "-m", "earnorm.events.consumer", "--redis-uri", lru_redis.url,
         "--queue", queue_name, "--log-level", "ERROR"], check=False, env=env)
    err = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2
    assert len(err) == 1 and "maxmemory-policy is 'allkeys-lru'" in err[0]


async def test_allow_eviction_runs_with_a_warning_and_stats_show_it(
    lru_redis: LocalRedis, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    config = {"queue_name": queue_name, "allow_eviction": True}
    bus = await earnorm.init(redis_uri=lru_redis.url, event_config=config)
    try:
        async with Consumer(bus=bus, registry=HandlerRegistry()):
            stats = await bus.stats()
        assert caplog.text.count("queued events may be evicted") == 2  # init and consumer
        assert stats["server"]["maxmemory_policy"] == "allkeys-lru"
        assert stats["server"]["may_evict"] and stats["server"]["eviction_allowed"]
    finally:
        await earnorm.close()


async def test_a_server_that_refuses_config_get_is_said_once_and_used(
    queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Managed Redis often renames or forbids CONFIG."""
    server = start_local_redis(extra_args=("--rename-command", "CONFIG", ""))
    caplog.set_level(logging.WARNING)
    handled: list[str] = []
    registry = HandlerRegistry()

    async def record(event: Event) -> None:
        handled.append(event.id)

    registry.register("managed.ok", record)
    try:
        bus = await EventBus.connect(server.url, queue_name=queue_name,
                                     heartbeat_interval=0.1, heartbeat_timeout=1)
        async with Consumer(bus=bus, registry=registry):
            job = await bus.publish(Event(name="managed.ok"))
            await wait_until(lambda: handled == [job], 5, message="the event handled")
            await anyio.sleep(0.3)  # a few heartbeats: the warning must not repeat
            stats = await bus.stats()
        warnings = [r for r in caplog.records if "CONFIG GET refused" in r.getMessage()]
        assert len(warnings) == 2  # once for the bus, once for the consumer: not per beat
        assert stats["server"]["maxmemory_policy"] is None
        assert stats["server"]["persistence"] in ("unknown", "none")
        await bus.close()
    finally:
        server.stop()


async def test_a_restart_without_persistence_is_reported_in_logs_and_stats(
    queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_local_redis()  # --save "" --appendonly no: persistence off
    caplog.set_level(logging.WARNING, logger="earnorm.consumer")
    registry = HandlerRegistry()
    registry.register("restart.waiting", _noop)
    bus = await EventBus.connect(server.url, queue_name=queue_name,
                                 heartbeat_interval=0.1, heartbeat_timeout=1)
    try:
        async with Consumer(bus=bus, registry=registry, concurrency=4):
            await bus.publish_batch([Event(name="restart.waiting") for _ in range(50)],
                                    delay=600)
            assert "persistence is off" in caplog.text, "said at start"
            before = (await bus.stats())["server"]["run_id"]
            server.kill()
            server = start_local_redis(server.port)

            async def restart_reported() -> bool:
                try:
                    return (await bus.stats())["server"]["restarts"] == 1
                except Exception:
                    return False

            await wait_until(restart_reported, 20, interval=0.1, message="the restart seen")
            stats = await bus.stats()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("Redis restarted" in m and "persistence off" in m for m in errors), errors
        assert stats["server"]["run_id"] != before
        assert stats["server"]["last_restart_lost_data"] is True
        assert stats["server"]["last_restart"] is not None
        assert stats["counters_reset_by_restart"] is True
        assert stats["delayed"] == 0, "the 50 delayed events were lost with the data"
        await bus.close()
    finally:
        server.stop()


async def test_a_delay_beyond_max_delay_is_refused_on_publish(
    redis_url: str, queue_name: str
) -> None:
    bus = await EventBus.connect(redis_url, queue_name=queue_name, max_delay=3600)
    with pytest.raises(EventValidationError, match=r"exceeds event_config.max_delay \(3600s\)"):
        await bus.publish(Event(name="far.away"), delay=3601)
    await bus.publish(Event(name="far.away"), delay=3600)
    assert await bus.redis.zcard(f"{queue_name}:delayed") == 1
    with pytest.raises(EventValidationError, match="max_delay"):
        await EventBus.publish_batch(bus, [Event(name="far.away")], delay=10 ** 9)
    await bus.close()


async def test_a_celery_eta_in_year_9999_is_dead_lettered_not_kept_forever(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    registry = HandlerRegistry()
    registry.register("user.created", _noop)
    far = envelope(task="user.created", task_id=str(uuid.uuid4()))
    far["headers"]["eta"] = "9999-12-31T23:59:59+00:00"
    far["properties"]["delivery_info"]["routing_key"] = queue_name
    async with Consumer(redis_url, queue_name=queue_name, registry=registry) as consumer:
        await redis.lpush(queue_name, orjson.dumps(far))
        await wait_until(lambda: redis.hexists(f"{queue_name}:failed", far["headers"]["id"]),
                         5, message="the far eta dead-lettered")
        job = await consumer.bus.get_failed_job(far["headers"]["id"])
    assert job["reason"] == "eta_out_of_range"
    assert "9999-12-31" in job["detail"] and "max_delay" in job["detail"]
    assert await redis.zcard(f"{queue_name}:delayed") == 0


async def _noop(event: Event) -> None:
    return None
