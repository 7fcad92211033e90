"""Large messages never pass through a Lua script: the fetch script weighs each message before
it reads it, moves one over ``LARGE_BYTES`` into a key of its own (``Q:held:<consumer>:<field>``)
unread, and the consumer reads it with a plain LINDEX. Acks, retries, dead-letters and the
recovery of a dead or stopping consumer move that key (UNLINK, RENAME), never its bytes; none
leaves a key behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from earnorm.events import FailedJob
from earnorm.events._broker.broker import LARGE_BYTES
from earnorm.events._broker.keys import HELD_MARK
from earnorm.events._wire import decode as protocol
from earnorm.events._wire.encode import encode_event
from tests.faults.workers import Worker, recorded
from tests.helpers import wait_until, waits_in_blmove

pytestmark = pytest.mark.anyio

MB = 1024 * 1024
MARK = HELD_MARK.encode()


def event(size: int = 0, name: str = "fault.recorded", i: int = 0) -> Event:
    return Event(name=name, data={"pad": "x" * size, "i": i})


async def leftovers(redis: Redis, queue: str) -> list[bytes]:
    """Keys of the queue that only a held large message uses."""
    found = []
    for kind in ("held", "parked", "probe", "later"):
        found += [key async for key in redis.scan_iter(match=f"{queue}:{kind}:*")]
    return found


async def test_a_large_message_is_held_in_a_key_of_its_own_and_read_unscripted(
    bus: EventBus,
) -> None:
    broker, keys, redis = bus.broker, bus.broker.keys, bus.redis
    small = [encode_event(event(i=i), keys.queue) for i in range(3)]
    large = encode_event(event(2 * MB), keys.queue)
    for raw in (small[0], large, small[1], small[2]):
        await redis.lpush(keys.queue, raw)

    fetched = await broker.fetch("c1", 10, 0, may_take_alone=True, max_bytes=16 * MB,
                                 alone_at=3, cap_bytes=16 * MB)

    assert fetched.messages == [small[0], large, small[1], small[2]]  # in order
    values = await redis.hgetall(keys.inflight("c1"))
    assert values[b"2"] == MARK  # the field names the key; the bytes never entered a script
    assert {values[b"1"], values[b"3"], values[b"4"]} == set(small)
    assert await redis.lrange(keys.held("c1", 2), 0, -1) == [large]
    assert not await redis.exists(keys.probe("c1"))

    assert await broker.ack("c1", [1, 2, 3, 4]) == 4
    assert not await redis.exists(keys.inflight("c1"))
    assert await leftovers(redis, keys.queue) == []


async def test_a_message_just_over_the_large_cut_is_held_and_one_under_it_is_not(
    bus: EventBus,
) -> None:
    broker, keys, redis = bus.broker, bus.broker.keys, bus.redis
    under = encode_event(event(LARGE_BYTES // 2), keys.queue)
    over = encode_event(event(LARGE_BYTES), keys.queue)
    await redis.lpush(keys.queue, under, over)
    fetched = await broker.fetch("c1", 10, 0, may_take_alone=True, max_bytes=16 * MB,
                                 alone_at=3)
    assert fetched.messages == [under, over]
    values = await redis.hgetall(keys.inflight("c1"))
    assert values == {b"1": under, b"2": MARK}


async def test_stats_weighs_the_oldest_message_before_reading_its_headers(
    bus: EventBus,
) -> None:
    """stats() reads the oldest ready message's headers (its age) inside Redis: a large one is
    weighed in a scratch list first and not read (its age unknown), a small one is."""
    broker, keys, redis = bus.broker, bus.broker.keys, bus.redis
    await redis.lpush(keys.queue, encode_event(event(2 * MB), keys.queue))
    small = Event(name="fault.recorded", data={})
    await redis.lpush(keys.ready[1], encode_event(small, keys.queue))
    snap = await broker.snapshot()
    assert len(snap["oldest_ready"]) == 2
    assert ("", "") in snap["oldest_ready"], "the large message's headers were read"
    stamps = [stamp for _, stamp in snap["oldest_ready"] if stamp]
    assert len(stamps) == 1 and stamps[0].startswith(small.timestamp.isoformat()[:16])
    assert not await redis.exists(keys.probe("~stats"))


async def test_a_dead_consumers_large_message_comes_back_by_reference(bus: EventBus) -> None:
    broker, keys, redis = bus.broker, bus.broker.keys, bus.redis
    large = encode_event(event(3 * MB), keys.queue)
    small = encode_event(event(i=1), keys.queue)
    await redis.lpush(keys.queue, large, small)
    taken = await broker.fetch("c-dead", 10, 0, may_take_alone=True, max_bytes=16 * MB,
                               alone_at=3, cap_bytes=16 * MB)
    assert taken.messages == [large, small]
    await redis.zadd(keys.consumers, {"c-dead": 1})  # its deadline long past

    assert await broker.recover("c-dead") == 2
    entries = [e for e in await redis.lrange(keys.recovered, 0, -1) if isinstance(e, bytes)]
    assert entries[0].startswith(b"2:c-dead:" + MARK + keys.parked_prefix("c-dead").encode())
    assert entries[1] == b"2:c-dead:" + small
    assert not await redis.exists(keys.held("c-dead", 1), keys.inflight("c-dead"))

    again = await broker.fetch("c2", 10, 100, may_take_alone=True, max_bytes=16 * MB,
                               alone_at=3, cap_bytes=16 * MB)
    assert again.messages == [large, small]
    assert again.redeliveries[0].deliveries == 2
    assert again.redeliveries[0].died_holding == ("c-dead",)
    assert await redis.hget(keys.inflight("c2"), "101") == MARK
    assert await broker.ack("c2", [101, 102]) == 2
    assert await leftovers(redis, keys.queue) == []


async def test_a_stopping_consumer_hands_its_large_messages_back(bus: EventBus) -> None:
    """A graceful stop (recover with force) and a message still in the landing list."""
    broker, keys, redis = bus.broker, bus.broker.keys, bus.redis
    held = encode_event(event(3 * MB, i=1), keys.queue)
    landed = encode_event(event(3 * MB, i=2), keys.queue)
    await redis.lpush(keys.queue, held)
    await broker.fetch("c1", 10, 0, may_take_alone=True, max_bytes=16 * MB, alone_at=3)
    await redis.lpush(keys.landing("c1"), landed)  # as the blocking wait leaves it

    assert await broker.recover("c1", force=True) == 2
    entries = [e for e in await redis.lrange(keys.recovered, 0, -1) if isinstance(e, bytes)]
    assert len(entries) == 2 and all(e.startswith(b"1::" + MARK) for e in entries)
    assert await redis.llen(keys.queue) == 0  # a reference never goes to Celery's list

    again = await broker.fetch("c2", 10, 0, may_take_alone=True, max_bytes=16 * MB,
                               alone_at=3, cap_bytes=16 * MB)
    assert sorted(again.messages) == sorted([held, landed])
    assert all(r.deliveries == 1 and not r.died_holding for r in again.redeliveries.values())
    assert await broker.ack("c2", [1, 2]) == 2
    assert await leftovers(redis, keys.queue) == []


async def test_a_large_message_retried_then_dead_lettered_leaves_no_key(
    bus: EventBus, redis_url: str,
) -> None:
    """Published while the consumer waits idle (so it arrives through the landing list),
    retried twice, then stored as failed with its data: its held key is renamed aside, so the
    record written by the settle script is small whatever the message weighs; ``retry_job``
    puts it back (fresh, retries reset) and ``remove_job`` leaves no key."""
    registry = HandlerRegistry()
    calls: list[int] = []

    async def handle(e: Event) -> None:
        calls.append(len(e.data["pad"]))
        raise RuntimeError("fails on purpose")
    registry.register("big.#", handle, retry_policy={
        "max_retries": 2, "interval_start": 0, "interval_step": 0.05})
    keys = bus.broker.keys
    async with Consumer(redis_url, queue_name=keys.queue, registry=registry):
        await wait_until(lambda: waits_in_blmove(bus.redis), 10,
                         message="the consumer in its blocking wait")
        await bus.publish(event(2 * MB, name="big.fails"))
        await wait_until(lambda: len(calls) == 3, 30, message=f"three attempts: {calls}")
        jobs = await wait_for_failed(bus)
    assert calls == [2 * MB] * 3
    job_id = jobs[0]["job_id"]
    assert jobs[0]["data"]["pad"] == "x" * (2 * MB)
    assert jobs[0]["envelope_aside"] is True
    assert orjson.loads(jobs[0]["envelope"])["headers"]["id"] == job_id
    stored = await bus.redis.hget(keys.failed, job_id)
    assert stored is not None and len(stored) < 64 * 1024, \
        f"the record leaves the message aside ({len(stored or b'')} bytes)"
    assert await bus.redis.sismember(keys.aside, job_id)
    assert await leftovers(bus.redis, keys.queue) == []

    await bus.retry_job(job_id)
    assert not await bus.redis.exists(keys.aside_of(job_id), keys.failed)
    assert not await bus.redis.sismember(keys.aside, job_id)
    back = await bus.redis.lrange(keys.ready[0], 0, -1)
    assert len(back) == 1
    fresh = protocol.decode(back[0])
    assert fresh.id == job_id and fresh.retries == 0
    assert fresh.to_event().data["pad"] == "x" * (2 * MB)

    async with Consumer(redis_url, queue_name=keys.queue, registry=registry):
        await wait_until(lambda: len(calls) == 6, 30, message=f"three more attempts: {calls}")
        await wait_for_failed(bus)
    await bus.remove_job(job_id)
    assert not await bus.redis.exists(keys.aside_of(job_id), keys.failed)
    assert await leftovers(bus.redis, keys.queue) == []


async def wait_for_failed(bus: EventBus) -> list[FailedJob]:
    jobs: list[FailedJob] = []

    async def stored() -> bool:
        jobs[:] = await bus.get_failed_jobs()
        return bool(jobs)
    await wait_until(stored, 30, message="the job in the failed store")
    return jobs


async def test_large_messages_held_by_a_killed_consumer_run_once_elsewhere(
    redis_url: str, queue_name: str, record: Path,
) -> None:
    queue = queue_name
    redis = Redis.from_url(redis_url)
    events = [event(3 * MB, i=i) for i in range(4)]
    hung = Worker(redis_url, queue, record, env={
        "EARNORM_TEST_HANDLER_SLEEP": "60", "EARNORM_TEST_RECORD_STARTS": "1"})
    second = None
    try:
        for e in events:
            await redis.lpush(queue, encode_event(e, queue))
        await wait_until(lambda: len(recorded(record, "start")) == 4, 30,
                         message=f"all four started:\n{hung.output()[-2000:]}")
        held = [key async for key in redis.scan_iter(match=f"{queue}:held:*")]
        assert len(held) == 4  # each in a key of its own while it runs
        hung.kill()
        second = Worker(redis_url, queue, record)
        await wait_until(lambda: len(recorded(record)) == 4, 60,
                         message=f"handled elsewhere:\n{second.output()[-2000:]}")
        assert recorded(record) == {e.id: 1 for e in events}
        await wait_until(lambda: _no_leftovers(redis, queue), 10, message="keys left behind")
    finally:
        hung.kill()
        if second is not None:
            second.kill()
        await redis.aclose()


async def _no_leftovers(redis: Redis, queue: str) -> bool:
    return await leftovers(redis, queue) == []


def sized(target: int, keys_queue: str) -> bytes:
    """An encoded event of exactly ``target`` bytes, or within a few bytes under it."""
    pad = target
    while True:
        raw = encode_event(event(pad), keys_queue)
        if len(raw) <= target:
            return raw
        pad -= max(1, (len(raw) - target) * 3 // 4)


async def test_a_message_near_the_limit_is_held_and_one_just_over_is_set_aside_unscripted(
    bus: EventBus,
) -> None:
    """A message's weight (the allocator's size class) may be a quarter over its length: one
    within max_message_bytes but weighed over it is held and run like any large one (it was
    read into a script, ~6 ms a MB, to be measured); one just over it is set aside by a RENAME
    once the consumer read its exact length, recorded too_large under its id."""
    broker, keys, redis = bus.broker, bus.broker.keys, bus.redis
    limit = 4 * MB
    within, over = sized(limit, keys.queue), sized(limit + 100_000, keys.queue)
    assert limit - 16 < len(within) <= limit < len(over)
    await redis.rpush("weighed", within)
    assert (await redis.memory_usage("weighed", samples=0) or 0) > limit  # the premise
    await redis.delete("weighed")
    await redis.lpush(keys.queue, within, over)

    fetched = await broker.fetch("c1", 10, 0, may_take_alone=True, max_bytes=limit,
                                 alone_at=3, cap_bytes=64 * MB)

    over_id = orjson.loads(over)["headers"]["id"]
    assert fetched.messages[0] == within and fetched.aside == {1}
    assert fetched.diverted == 1 and fetched.diverted_ids == [over_id]
    assert await redis.hgetall(keys.inflight("c1")) == {b"1": MARK}
    job = await bus.get_failed_job(over_id)
    assert job["reason"] == "too_large" and job.get("size") == len(over)
    assert job["name"] == "fault.recorded"
    assert await redis.lrange(keys.aside_of(over_id), 0, -1) == [over]
    assert await broker.ack("c1", [1]) == 1
    assert await leftovers(redis, keys.queue) == []

    assert await bus.retry_job(over_id) == over_id  # back on the queue, natively
    assert await redis.lrange(keys.queue, 0, -1) == [over]
    assert not await redis.exists(keys.aside_of(over_id), keys.aside)


async def test_a_large_retry_and_a_large_delayed_publish_wait_by_reference(
    bus: EventBus,
) -> None:
    """A large message's retry, and a large event published with a delay, wait in keys of
    their own (``Q:later:*``) named by the delayed set: the promote script hands the
    reference to the fetch, which holds the key; no script reads the message."""
    broker, keys, redis = bus.broker, bus.broker.keys, bus.redis
    large = encode_event(event(2 * MB), keys.queue)
    await redis.lpush(keys.queue, large)
    fetched = await broker.fetch("c1", 10, 0, may_take_alone=True, max_bytes=16 * MB,
                                 alone_at=3)
    assert fetched.messages == [large]
    retried = large.replace(b'"retries":0', b'"retries":1')
    assert await broker.settle("c1", 1, retry=(retried, 0, 0))
    published = await bus.publish(event(2 * MB), delay=0.01)
    assert not await redis.exists(keys.held("c1", 1), keys.inflight("c1"))
    members: Any = await redis.zrange(keys.delayed, 0, -1)
    assert len(members) == 2 and all(m.startswith(b"0:" + MARK) for m in members)
    later = [key async for key in redis.scan_iter(match=f"{keys.queue}:later:*")]
    assert len(later) == 2
    assert [await redis.ttl(k) for k in later] == [-1, -1]  # made to last

    await wait_until(lambda: _promoted(broker), 5, message="both promoted")
    assert await redis.llen(keys.queue) == 0  # references are ours: not on Celery's list
    again = await broker.fetch("c2", 10, 0, may_take_alone=True, max_bytes=16 * MB,
                               alone_at=3, cap_bytes=16 * MB)
    ids = [orjson.loads(m)["headers"]["id"] for m in again.messages]
    assert len(again.messages) == 2, ids
    assert retried in again.messages and published in ids, (ids, published)
    assert set((await redis.hgetall(keys.inflight("c2"))).values()) == {MARK}
    assert await broker.ack("c2", [1, 2]) == 2
    assert await leftovers(redis, keys.queue) == []


async def _promoted(broker: Any) -> bool:
    await broker.promote_due()
    return int(await broker.redis.zcard(broker.keys.delayed)) == 0
