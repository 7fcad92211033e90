"""The publish lane: the bus's own connection for LPUSH, and what happens when it breaks."""

from __future__ import annotations

import anyio
import pytest
from redis.asyncio import Redis

from earnorm import Event, EventBus
from tests.helpers import loads, wait_until

pytestmark = pytest.mark.anyio


async def _clients(redis: Redis) -> int:
    return len(await redis.client_list())


async def test_a_killed_lane_connection_loses_no_publish_and_doubles_none(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    first = await bus.publish(Event(name="a.b", data={"i": 0}))
    await redis.client_kill_filter(_type="normal", skipme=True)
    second = await bus.publish(Event(name="a.b", data={"i": 1}))
    third = await bus.publish(Event(name="a.b", data={"i": 2}))  # on a fresh lane connection
    ids = [loads(raw)["headers"]["id"] for raw in await redis.lrange(queue_name, 0, -1)]
    assert ids == [third, second, first]


async def test_concurrent_publishes_share_the_lane_and_the_pool(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    ids = [""] * 500

    async def one(i: int) -> None:
        ids[i] = await bus.publish(Event(name="a.b", data={"i": i}))

    async with anyio.create_task_group() as tg:
        for i in range(500):
            tg.start_soon(one, i)
    stored = {loads(raw)["headers"]["id"] for raw in await redis.lrange(queue_name, 0, -1)}
    assert stored == set(ids) and len(stored) == 500


async def test_a_publish_cancelled_before_its_reply_drops_the_connection(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    await bus.publish(Event(name="a.b"))
    lane = bus.broker._lane
    assert lane is not None and lane.connected
    await redis.client_pause(300, all=False)  # write commands only
    with anyio.move_on_after(0.05) as scope:
        await bus.publish(Event(name="a.b"))  # sent; the reply waits for the pause
    assert scope.cancelled_caught
    # Its reply may still arrive: a connection out of step must not be used again.
    assert not lane.connected
    after = await bus.publish(Event(name="a.b", data={"after": True}))
    assert loads(await redis.lindex(queue_name, 0))["headers"]["id"] == after


async def test_close_releases_the_lane_connection(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    before = await _clients(redis)
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    await bus.publish(Event(name="a.b"))
    assert await _clients(redis) > before
    await bus.close()

    async def released() -> bool:
        return await _clients(redis) == before
    await wait_until(released, 5, message="the bus's connections to close")


async def test_batch_of_one_list_is_one_lpush_in_order(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    ids = await bus.publish_batch([Event(name="a.b", data={"i": i}) for i in range(100)])
    popped = [loads(await redis.rpop(queue_name))["headers"]["id"] for _ in ids]
    assert popped == ids


async def test_publishes_past_the_pool_size_wait_for_a_connection(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    """redis-py 8's plain pool fails a command outright past max_connections; the bus's pool
    makes it wait. A pool of 4 and 200 concurrent publishes: every one lands."""
    small = await EventBus.connect(f"{redis_url}?max_connections=4", queue_name=queue_name)
    try:
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(small.publish, Event(name="a.b", data={"i": i}))
    finally:
        await small.close()
    assert await redis.llen(queue_name) == 200


async def test_a_lane_reply_later_than_the_socket_timeout_gives_way_to_the_pool(
    redis_url: str, redis: Redis, queue_name: str
) -> None:
    """The lane's connection keeps the URL's ``socket_timeout``: past it the lane drops its
    connection and the publish goes on through the pool's retries, landing once Redis answers
    again (a lane without a timeout would wait out the whole pause)."""
    # max_message_bytes 64 KiB: the read timeout is lifted to ~1.1 s (fit_read_timeout)
    bus = await EventBus.connect(f"{redis_url}?socket_timeout=0.2",
                                 {"queue_name": queue_name, "max_message_bytes": 64 * 1024})
    try:
        await bus.publish(Event(name="a.b"))
        lane = bus.broker._lane
        assert lane is not None and lane.connected
        await redis.client_pause(3000, all=False)  # write commands only
        with anyio.fail_after(20):
            job = await bus.publish(Event(name="a.b", data={"late": True}))
        assert not lane.connected  # it gave up at its timeout instead of waiting out the pause
        ids = [loads(raw)["headers"]["id"] for raw in await redis.lrange(queue_name, 0, -1)]
        assert job in ids
    finally:
        await bus.close()
