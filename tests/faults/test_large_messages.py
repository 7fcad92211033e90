"""Large valid messages (8 MB, under the 16 MiB ``max_message_bytes``) drain with default
settings: each fetch moves a bounded number of bytes (one large message at a time), the
consumer holds about ``max_inflight_bytes`` at most, and no command of ours blocks Redis for
seconds. Before, one fetch script moved 200 x 8 MB (9 s of Redis), the consumer's read timed
out, and the messages went back and forth forever with nothing processed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from earnorm import Event, EventBus, LocalRedis, start_local_redis
from earnorm.events._wire.encode import encode_event
from tests.faults.workers import Worker, recorded
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

MB = 1024 * 1024
BUDGET = 64 * MB  # the consumer's default max_inflight_bytes


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    """A server of the test's own: SLOWLOG sees only this test's commands."""
    local = start_local_redis()
    client = SyncRedis(port=local.port)
    client.config_set("slowlog-log-slower-than", 10_000)  # 10 ms
    client.config_set("slowlog-max-len", 1024)
    client.close()
    yield local
    local.stop()


def large_events(count: int, size: int) -> list[Event]:
    return [Event(name="fault.recorded", data={"pad": "x" * size, "i": i}) for i in range(count)]


async def push(redis: Redis, queue: str, events: list[Event]) -> list[str]:
    for event in events:
        await redis.lpush(queue, encode_event(event, queue))
    return [e.id for e in events]


def slowest_ms(server: LocalRedis) -> tuple[float, str]:
    """The slowest command SLOWLOG kept (over 10 ms), and which."""
    client = SyncRedis(port=server.port)
    try:
        entries = client.slowlog_get(1024)
    finally:
        client.close()
    if not entries:
        return 0.0, ""
    worst = max(entries, key=lambda e: e["duration"])
    command = worst["command"]
    shown = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
    return worst["duration"] / 1000, shown[:60]


async def test_sixty_8_mb_events_drain_with_default_settings(
    server: LocalRedis, record: Path
) -> None:
    queue = "large:events"
    redis = Redis.from_url(server.url)
    ids = await push(redis, queue, large_events(60, 6 * MB))  # ~8 MB envelopes
    size = await redis.lindex(queue, 0)
    assert size is not None and 7.5 * MB < len(size) < 8.5 * MB
    worker = Worker(server.url, queue, record, log_level="INFO")
    started = time.monotonic()
    try:
        await wait_until(lambda: len(recorded(record)) == 60, 120, interval=0.2,
                         message=f"60 large events handled:\n{worker.output()[-2000:]}")
        took = time.monotonic() - started
        peak = worker.peak_rss_bytes()
        bus = await EventBus.connect(server.url, queue_name=queue)
        stats = await bus.stats()
        await bus.close()
    finally:
        worker.kill()
        await redis.aclose()
    slowest, which = slowest_ms(server)
    print(f"\n60 x 8 MB: drained in {took:.1f} s, consumer peak RSS {peak / MB:.0f} MB, "
          f"slowest Redis command {slowest:.0f} ms ({which})")
    assert set(recorded(record)) == set(ids) and max(recorded(record).values()) == 1
    assert stats["failed"] == 0  # nothing dead-lettered (no delivery limit, no timeouts)
    # The budget, one more message (~3x its 8 MB on the wire while it runs), and the process
    # itself (~45 MB: tests/test_imports' floor and the recording app).
    assert peak < BUDGET + 3 * 8 * MB + 60 * MB, f"peak RSS {peak / MB:.0f} MB"
    assert slowest < 250, f"{which} blocked Redis {slowest:.0f} ms"


async def test_a_message_just_under_max_message_bytes_is_handled_past_a_smaller_budget(
    server: LocalRedis, record: Path
) -> None:
    queue = "largest:events"
    redis = Redis.from_url(server.url)
    [event] = large_events(1, int(11.9 * MB))  # ~16 MB on the wire, under the 16 MiB limit
    raw = encode_event(event, queue)
    assert 15.5 * MB < len(raw) < 16 * MB
    await redis.lpush(queue, raw)
    # A budget smaller than the message: it still moves, alone (at least one is always taken).
    worker = Worker(server.url, queue, record, env={"EARNORM_MAX_INFLIGHT_BYTES": str(8 * MB)})
    try:
        await wait_until(lambda: recorded(record) == {event.id: 1}, 60, interval=0.1,
                         message=f"the 16 MB event handled:\n{worker.output()[-2000:]}")
        assert await redis.hlen(f"{queue}:failed") == 0
    finally:
        worker.kill()
        await redis.aclose()


async def test_small_events_keep_flowing_among_large_ones(
    server: LocalRedis, record: Path
) -> None:
    """Twenty 8 MB events with a thousand 1 KB ones published around them: every small one is
    handled, none waits behind the large ones for long (a fetch takes one large message at a
    time, and small ones in the same fetch up to its byte cap)."""
    queue = "mixed:events"
    redis = Redis.from_url(server.url)
    small = [Event(name="fault.recorded", data={"pad": "s" * 1024, "i": i}) for i in range(1000)]
    large = large_events(20, 6 * MB)
    mixed: list[Event] = []
    for i, event in enumerate(small):
        mixed.append(event)
        if i % 50 == 0:
            mixed.append(large[i // 50])
    await push(redis, queue, mixed)
    worker = Worker(server.url, queue, record)
    started = time.monotonic()
    try:
        small_ids = {e.id for e in small}
        await wait_until(lambda: small_ids <= set(recorded(record)), 60, interval=0.1,
                         message=f"the small events:\n{worker.output()[-2000:]}")
        small_done = time.monotonic() - started
        await wait_until(lambda: len(recorded(record)) == len(mixed), 60, interval=0.1,
                         message="the large ones too")
        all_done = time.monotonic() - started
    finally:
        worker.kill()
        await redis.aclose()
    slowest, which = slowest_ms(server)
    print(f"\n1,000 x 1 KB among 20 x 8 MB: small ones done in {small_done:.1f} s, all in "
          f"{all_done:.1f} s, slowest Redis command {slowest:.0f} ms ({which})")
    assert max(recorded(record).values()) == 1
    assert small_done < 30


async def test_two_hundred_8_mb_events_drain_under_a_512_mb_address_space_limit(
    server: LocalRedis, record: Path
) -> None:
    queue = "limited:events"
    redis = Redis.from_url(server.url)
    ids = await push(redis, queue, large_events(200, 6 * MB))
    # RLIMIT_AS, as a container's memory limit would kill it: an allocation past it fails.
    limit = ("prlimit", f"--as={512 * MB}", "--")
    worker = Worker(server.url, queue, record, wrapper=limit, env={"MALLOC_ARENA_MAX": "2"})
    try:
        await wait_until(lambda: len(recorded(record)) == 200, 300, interval=0.2,
                         message=f"200 large events handled:\n{worker.output()[-2000:]}")
        assert worker.alive(), worker.output()[-2000:]
    finally:
        worker.kill()
        await redis.aclose()
    assert set(recorded(record)) == set(ids) and max(recorded(record).values()) == 1
    assert "MemoryError" not in worker.output()


async def test_a_dead_consumers_messages_come_back_in_bounded_slices(
    server: LocalRedis,
) -> None:
    """1,200 small and three 2 MB messages held by a dead consumer: every one comes back, in
    slices of at most 500 messages / 1 MiB (plus one), and its registration goes last."""
    queue = "slices:events"
    bus = await EventBus.connect(server.url, queue_name=queue)
    keys, dead = bus.broker.keys, "c-dead"
    small = encode_event(Event(name="fault.recorded", data={"n": 1}), queue)
    big = encode_event(Event(name="fault.recorded", data={"pad": "x" * (3 * MB // 2)}), queue)
    held: dict[Any, Any] = {
        **{str(i): small for i in range(1200)}, **{str(1200 + i): big for i in range(3)}}
    await bus.redis.hset(keys.inflight(dead), mapping=held)
    await bus.redis.zadd(keys.consumers, {dead: 1})
    client = SyncRedis(port=server.port)

    def scripts_run() -> int:
        stats: dict[str, dict[str, int]] = client.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_eval"))
    try:
        before = scripts_run()
        assert await bus.broker.recover(dead) == len(held)
        slices = scripts_run() - before
    finally:
        client.close()
    assert await bus.redis.llen(keys.recovered) == len(held)
    assert not await bus.redis.exists(keys.inflight(dead))
    assert await bus.redis.zscore(keys.consumers, dead) is None
    assert slices >= 5, slices  # 1,200 small ones: 3 slices at least; each 2 MB one alone
    await bus.close()
