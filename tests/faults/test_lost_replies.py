"""Replies that do not arrive: a read timeout is never shorter than the largest reply we ask
for, a fetch sent again after its first run went through overwrites nothing, and fetches that
time out are said once and backed off, never looped on without progress."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

import anyio
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from earnorm import Consumer, Event, EventBus, HandlerRegistry, LocalRedis
from earnorm.events._broker.errors import ReplyLost
from earnorm.events._wire.encode import encode_event
from tests.helpers import counting_registry, private_redis, wait_until

pytestmark = pytest.mark.anyio

MB = 1024 * 1024

@pytest.fixture
def debug_redis() -> Iterator[LocalRedis]:
    """A server of this test's own (blocking it holds up no other test), with DEBUG SLEEP."""
    with private_redis("--enable-debug-command", "yes") as server:
        yield server


async def test_a_fetch_sent_again_after_its_reply_was_lost_overwrites_nothing(
    bus: EventBus,
) -> None:
    broker, keys, redis = bus.broker, bus.broker.keys, bus.redis
    raws = [encode_event(Event(name="lost.reply", data={"i": i}), keys.queue) for i in range(3)]
    await redis.lpush(keys.queue, *raws)
    first = await broker.fetch("c1", 1, 0, may_take_alone=True, max_bytes=MB, alone_at=3)
    assert first.messages == [raws[0]]

    # The same call again (what redis-py's retry sends when the first reply was not read).
    with pytest.raises(ReplyLost):
        await broker.fetch("c1", 1, 0, may_take_alone=True, max_bytes=MB, alone_at=3)

    assert await redis.hget(keys.inflight("c1"), "1") == raws[0]  # not overwritten
    assert await redis.lrange(keys.queue, 0, -1) == [raws[2], raws[1]]  # nothing else moved


async def test_a_read_timeout_shorter_than_the_largest_reply_is_lifted(
    redis_url: str, queue_name: str, redis: Redis, caplog: pytest.LogCaptureFixture,
) -> None:
    """A 1 ms ``socket_timeout`` cannot read an 8 MB message: every read would time out,
    and the consumer would fetch the same messages forever."""
    count = 3
    for i in range(count):
        raw = encode_event(Event(name="lost.large", data={"pad": "x" * (8 * MB), "i": i}),
                           queue_name)
        await redis.lpush(queue_name, raw)
    seen: Counter[str] = Counter()
    caplog.set_level(logging.WARNING, "earnorm")
    async with Consumer(f"{redis_url}?socket_timeout=0.001", queue_name=queue_name,
                        registry=counting_registry("lost.#", seen)):
        await wait_until(lambda: len(seen) == count, timeout=60,
                         message="the large messages to be handled")
    assert set(seen.values()) == {1}
    assert "socket_timeout=0.001s in the Redis URL is shorter than reading the largest " \
        "reply" in caplog.text


async def test_fetches_that_time_out_are_said_once_backed_off_and_lose_nothing(
    debug_redis: LocalRedis, queue_name: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """The server sleeps longer than the client's three tries of a fetch: the fetch's runs
    queued behind the sleep go through after it, replies unread. The consumer says
    once that its fetches make no progress, backs off, hands back what the lost runs moved
    (the second and third runs, seeing the first's fields, move nothing), and drains."""
    count = 300
    seen: Counter[str] = Counter()
    started = anyio.Event()
    registry = HandlerRegistry()

    async def handle(event: Event) -> None:
        seen[event.id] += 1
        if len(seen) >= 30:
            started.set()
        await anyio.sleep(0.02)
    registry.register("lost.#", handle)
    bus = await EventBus.connect(debug_redis.url, queue_name=queue_name)
    blocker = Redis.from_url(debug_redis.url, socket_timeout=30, retry=Retry(NoBackoff(), 0))
    caplog.set_level(logging.WARNING, "earnorm")
    try:
        await bus.publish_batch([Event(name="lost.busy", data={"i": i}) for i in range(count)])
        # max_message_bytes 64 KiB: the read timeout is lifted to ~1.1 s, not ~11 s.
        async with Consumer(f"{debug_redis.url}?socket_timeout=0.2", queue_name=queue_name,
                            registry=registry, prefetch=20, concurrency=4,
                            config={"max_message_bytes": 64 * 1024,
                                          "heartbeat_timeout": 30}):
            with anyio.fail_after(30):
                await started.wait()
            await blocker.execute_command(  # type: ignore[no-untyped-call]
                "DEBUG", "SLEEP", 4.5)  # serves no one meanwhile
            await wait_until(lambda: len(seen) == count, timeout=60,
                             message="every event to be handled")
    finally:
        await blocker.aclose()
        await bus.close()
    assert set(seen.values()) == {1}  # none lost, none run twice
    said = [r.getMessage() for r in caplog.records]
    assert sum("fetch made no progress" in m for m in said) == 1, said
    assert sum("fetching makes progress again" in m for m in said) == 1, said
