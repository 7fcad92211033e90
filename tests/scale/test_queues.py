"""Several queues in one consumer process (``ConsumerGroup``, ``--queue a --queue b``)."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from earnorm import ConsumerGroup, Event, EventBus, HandlerRegistry
from earnorm.events._broker.keys import text
from tests.helpers import wait_until
from tests.processes import consumer_process

pytestmark = pytest.mark.anyio


async def test_two_queues_are_both_served_each_in_its_own_priority_order(
    redis_url: str, redis: Redis
) -> None:
    tag = uuid.uuid4().hex[:8]
    queues = [f"test:{tag}:a", f"test:{tag}:b"]
    order: dict[str, list[int]] = {q: [] for q in queues}
    registry = HandlerRegistry()

    async def record(event: Event) -> None:
        order[event.data["queue"]].append(event.data["priority"])
    registry.register("q.*", record)
    for queue in queues:
        bus = await EventBus.connect(redis_url, queue_name=queue)
        for priority in (9, 6, 3, 0):  # lowest first: the consumer must serve 0 first
            await bus.publish_batch([Event(name="q.x", data={"queue": queue,
                                                             "priority": priority})
                                     for _ in range(5)], priority=priority)
        await bus.close()
    async with ConsumerGroup(redis_url, queues=queues, registry=registry,
                             concurrency=2) as group:
        assert group.slots == [1, 1]
        await wait_until(lambda: all(len(o) == 20 for o in order.values()), 15,
                         message="both queues drained")
        stats = [await c.bus.stats() for c in group]
        assert [s["queue"] for s in stats] == queues
        assert all(len(s["consumers"]) == 1 for s in stats)  # one heartbeat per queue
    for queue in queues:
        assert order[queue] == sorted(order[queue]), order[queue]
    keys = [k async for k in redis.scan_iter(match=f"test:{tag}:*")]
    if keys:
        await redis.delete(*keys)


async def test_weights_split_the_handler_slots() -> None:
    group = ConsumerGroup("redis://127.0.0.1:1/0", queues=["a=3", "b"], concurrency=100)
    assert group.slots == [75, 25]
    with pytest.raises(Exception, match="NAME=WEIGHT"):
        ConsumerGroup("redis://127.0.0.1:1/0", queues=["a=x"])


async def test_the_cli_serves_every_queue_given(redis_url: str, redis: Redis) -> None:
    tag = uuid.uuid4().hex[:8]
    a, b = f"test:{tag}:a", f"test:{tag}:b"
    ids: list[str] = []
    for queue in (a, b):
        bus = await EventBus.connect(redis_url, queue_name=queue)
        ids += await bus.publish_batch([Event(name="test.counted", data={}) for _ in range(50)])
        await bus.close()
    # The counting app counts into "<EARNORM_QUEUE>:handled"; the CLI reads both queues from it.
    with consumer_process(redis_url, f"{a},{b}", concurrency=4):
        await wait_until(lambda: _handled(redis, f"{a},{b}", 100), 20, message="100 handled")
    handled = await redis.hkeys(f"{a},{b}:handled")
    assert {text(h) for h in handled} == set(ids)
    keys = [k async for k in redis.scan_iter(match=f"test:{tag}:*")]
    await redis.delete(*keys, f"{a},{b}:handled")


async def _handled(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.hlen(f"{key}:handled")) >= n
