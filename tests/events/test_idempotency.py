"""``publish(dedup_key=...)`` and ``idempotent=True`` handlers, against a real Redis."""

from __future__ import annotations

from collections import Counter

import pytest
from redis.asyncio import Redis

from earnorm import ConfigError, Consumer, Event, EventBus, EventValidationError, HandlerRegistry
from earnorm.events._wire import encode
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


async def test_a_second_publish_with_the_same_dedup_key_is_dropped_and_returns_the_first_id(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    first = await bus.publish(Event(name="pay.charged", data={"n": 1}), dedup_key="order-7")
    again = await bus.publish(Event(name="pay.charged", data={"n": 2}), dedup_key="order-7")
    assert again == first
    assert await redis.llen(queue_name) == 1
    other = await bus.publish(Event(name="pay.charged", data={}), dedup_key="order-8")
    assert other != first and await redis.llen(queue_name) == 2
    # without a key, the same publish twice is two messages
    await bus.publish(Event(name="pay.charged", data={}))
    await bus.publish(Event(name="pay.charged", data={}))
    assert await redis.llen(queue_name) == 4
    await bus.close()


async def test_the_dedup_key_expires_after_its_ttl_and_applies_to_delayed_events(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    first = await bus.publish(Event(name="a.b", data={}), delay=60, dedup_key="k",
                              dedup_ttl=0.3)
    assert await bus.publish(Event(name="a.b", data={}), delay=60, dedup_key="k") == first
    assert await redis.zcard(f"{queue_name}:delayed") == 1
    await wait_until(lambda: _gone(redis, f"{queue_name}:dedup:k"), 5, message="key expired")
    assert await bus.publish(Event(name="a.b", data={}), delay=60, dedup_key="k") != first
    assert await redis.zcard(f"{queue_name}:delayed") == 2
    with pytest.raises(EventValidationError, match="dedup_ttl"):
        await bus.publish(Event(name="a.b", data={}), dedup_key="k", dedup_ttl=0)
    await bus.close()


async def _gone(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_an_idempotent_handler_skips_an_event_id_it_already_handled(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    calls: Counter[str] = Counter()
    registry = HandlerRegistry()

    async def once(event: Event) -> None:
        calls["once"] += 1

    async def every_time(event: Event) -> None:
        calls["every_time"] += 1
    registry.register("dup.x", once, idempotent=True, name="once")
    registry.register("dup.x", every_time, name="every_time")
    event = Event(name="dup.x", data={})
    raw = encode.encode_event(event, queue_name)
    await redis.lpush(queue_name, raw, raw)  # at-least-once: the same event delivered twice
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    async with Consumer(bus=bus, registry=registry, concurrency=1):
        await wait_until(lambda: calls["every_time"] == 2, 10, message="both deliveries")
    assert calls == {"once": 1, "every_time": 2}
    assert (await bus.stats())["counters"]["processed"] == 2
    await bus.close()


def test_idempotent_options_are_checked() -> None:
    registry = HandlerRegistry()

    async def handler(event: Event) -> None: ...
    with pytest.raises(ConfigError, match="idempotency_ttl"):
        registry.register("a.b", handler, idempotent=True, idempotency_ttl=0)
    with pytest.raises(ConfigError, match="batches"):
        registry.register("a.b", handler, idempotent=True, batch_size=10)
