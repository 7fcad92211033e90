"""Transactions, the transactional outbox and its relay, on a real MongoDB-wire server with
transactions and a real Redis."""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import pytest
from pymongo.errors import OperationFailure
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

import earnorm
from earnorm import (
    BaseModel,
    Consumer,
    DatabaseError,
    Environment,
    Event,
    EventBus,
    after_create,
    dispatch_model_event,
)
from earnorm._outbox import COLLECTION, OutboxRelay
from earnorm._transaction import session_options
from earnorm.events._wire import decode as protocol
from tests.helpers import counting_registry, wait_until
from tests.processes import ROOT

pytestmark = pytest.mark.anyio


class Member(BaseModel):
    _collection = "members"
    email: str
    fail_after_create: bool = False

    @after_create
    async def announce(self) -> None:
        await dispatch_model_event(earnorm.event_bus, Member, "created", self.id, self)
        if self.fail_after_create:
            raise RuntimeError("hook failed after the event was dispatched")


async def _outbox(env: Environment, state: str | None = None) -> int:
    query: dict[str, Any] = {} if state is None else {"state": state}
    # Inside a transaction: what the transaction sees (its own writes).
    return int(await env.database[COLLECTION].count_documents(query, **session_options()))


async def test_a_committed_create_is_delivered_through_the_outbox(
    orm: Environment, redis: Redis, queue_name: str
) -> None:
    seen: Counter[str] = Counter()
    async with earnorm.transaction():
        member = Member(email="a@example.com")
        await member.create()
        assert await _outbox(orm) == 1  # inside the transaction, in the outbox only
        assert await redis.llen(queue_name) == 0
    assert await earnorm.env.database[COLLECTION].count_documents({}) == 1  # committed
    async with Consumer(bus=earnorm.event_bus, registry=counting_registry("#", seen)):
        await wait_until(lambda: len(seen) == 1, 10, message="the event handled")
    assert await Member.count() == 1
    await wait_until(lambda: _none_left(orm), 5, message="the sent entry deleted")
    stats = await earnorm.event_bus.stats()
    assert stats["outbox"]["pending"] == 0 and stats["outbox"]["relayed"] == 1


async def _none_left(env: Environment) -> bool:
    return await _outbox(env) == 0


async def test_with_retention_sent_entries_are_kept_marked_sent(
    mongo_uri: str, database_name: str, redis_url: str, queue_name: str, redis: Redis
) -> None:
    await earnorm.init(mongo_uri=mongo_uri, database=database_name, redis_uri=redis_url,
                       event_config={"queue_name": queue_name, "outbox_retention": 600})
    try:
        async with earnorm.transaction():
            await earnorm.event_bus.publish(Event(name="kept.x", data={}))
        await wait_until(lambda: _outbox(earnorm.env, "sent"), 5, message="marked sent")
        assert await redis.llen(queue_name) == 1
    finally:
        await earnorm.close()


async def test_a_transaction_that_raises_leaves_no_document_no_event_no_outbox_entry(
    orm: Environment, redis: Redis, queue_name: str
) -> None:
    with pytest.raises(RuntimeError, match="hook failed"):
        async with earnorm.transaction():
            await Member(email="b@example.com", fail_after_create=True).create()
    assert await Member.count() == 0
    assert await _outbox(orm) == 0
    assert await redis.llen(queue_name) == 0
    with pytest.raises(ValueError):
        async with earnorm.transaction():
            await Member(email="c@example.com").create()
            raise ValueError("any error in the block")
    assert await Member.count() == 0 and await _outbox(orm) == 0


async def test_outside_a_transaction_events_go_straight_to_redis(
    orm: Environment, redis: Redis, queue_name: str
) -> None:
    await Member(email="d@example.com").create()
    assert await redis.llen(queue_name) == 1
    assert await _outbox(orm) == 0


async def test_a_process_killed_right_after_commit_delivers_its_event_exactly_once_on_restart(
    mongo_uri: str, database_name: str, redis_url: str, queue_name: str, redis: Redis
) -> None:
    with anyio.fail_after(60):
        writer = await anyio.run_process(
            [sys.executable, "-m", "tests.apps.outbox_writer", mongo_uri, database_name,
             redis_url, queue_name], cwd=ROOT, check=False)
    assert writer.returncode == -9, writer.stderr.decode()
    assert await redis.llen(queue_name) == 0  # committed, never relayed
    seen: Counter[str] = Counter()
    # "Restart": a process init()s again; its relay finds the committed entry.
    await earnorm.init(mongo_uri=mongo_uri, database=database_name, redis_uri=redis_url,
                       event_config={"queue_name": queue_name})
    try:
        env = earnorm.env
        assert await env.database["accounts"].count_documents({}) == 1
        async with Consumer(bus=earnorm.event_bus, registry=counting_registry("#", seen)):
            await wait_until(lambda: len(seen) == 1, 15, message="the event delivered")
            await wait_until(lambda: _settled(earnorm.event_bus, env), 10,
                             message="outbox empty, queue drained")
        assert list(seen.values()) == [1]
    finally:
        await earnorm.close()


async def _settled(bus: EventBus, env: Environment) -> bool:
    stats = await bus.stats()
    return (stats["ready_total"] == 0 and stats["inflight"] == 0
            and await _outbox(env, "pending") == 0)


async def test_two_relays_racing_over_a_thousand_entries_publish_each_once(
    mongo_uri: str, database_name: str, redis_url: str, queue_name: str, redis: Redis
) -> None:
    await earnorm.init(mongo_uri=mongo_uri, database=database_name, redis_uri=redis_url,
                       event_config={"queue_name": queue_name, "outbox_relay": False})
    try:
        ids: list[str] = []
        for start in range(0, 1000, 250):
            async with earnorm.transaction():
                ids += await earnorm.event_bus.publish_batch(
                    [Event(name="race.x", data={"i": i}) for i in range(start, start + 250)])
        env = earnorm.env
        assert await _outbox(env, "pending") == 1000 and await redis.llen(queue_name) == 0
        buses = [await EventBus.connect(redis_url, queue_name=queue_name) for _ in range(2)]
        relays = [OutboxRelay(bus, env.database, batch=50) for bus in buses]

        async def drain(relay: OutboxRelay) -> None:
            while await _outbox(env, "pending"):
                await relay.relay_once()
        async with anyio.create_task_group() as tg:
            for relay in relays:
                tg.start_soon(drain, relay)
        assert all(r.relayed for r in relays), "both relays should have won some entries"
        assert sum(r.relayed for r in relays) == 1000
        messages = await redis.lrange(queue_name, 0, -1)
        published = Counter(protocol.decode(m).id for m in messages)
        assert len(messages) == 1000 and set(published) == set(ids)
        for bus in buses:
            await bus.close()
    finally:
        await earnorm.close()


async def test_a_relay_killed_between_push_and_mark_leaves_no_duplicate(
    mongo_uri: str, database_name: str, redis_url: str, queue_name: str, redis: Redis
) -> None:
    await earnorm.init(mongo_uri=mongo_uri, database=database_name, redis_uri=redis_url,
                       event_config={"queue_name": queue_name, "outbox_relay": False,
                                     "outbox_claim_timeout": 0.2})
    try:
        async with earnorm.transaction():
            await earnorm.event_bus.publish(Event(name="crash.x", data={}))
        env = earnorm.env
        dying = _DiesBeforeMarking(earnorm.event_bus, env.database)
        with pytest.raises(ConnectionError):
            await dying.relay_once()
        assert await redis.llen(queue_name) == 1 and await _outbox(env, "pending") == 1
        survivor = OutboxRelay(earnorm.event_bus, env.database)
        await wait_until(lambda: _relay(survivor), 5, message="the entry re-claimed and marked")
        assert await redis.llen(queue_name) == 1  # the second push was dropped by Redis
        assert await _outbox(env, "pending") == 0
    finally:
        await earnorm.close()


class _DiesBeforeMarking(OutboxRelay):
    async def _mark_sent(self, ids: list[Any], token: str) -> int:
        raise ConnectionError("the relay died after the push, before marking the entry sent")


async def _relay(relay: OutboxRelay) -> bool:
    await relay.relay_once()
    return not await relay.collection.count_documents({"state": "pending"})


async def test_stats_and_the_cli_show_the_outbox_size_and_lag(
    mongo_uri: str, database_name: str, redis_url: str, queue_name: str
) -> None:
    await earnorm.init(mongo_uri=mongo_uri, database=database_name, redis_uri=redis_url,
                       event_config={"queue_name": queue_name, "outbox_relay": False})
    try:
        async with earnorm.transaction():
            await earnorm.event_bus.publish_batch([Event(name="lag.x", data={})
                                                   for _ in range(3)])
    finally:
        await earnorm.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EARNORM_", "MONGODB"))}
    result = await anyio.run_process(
        [sys.executable, "-m", "earnorm.events", "stats", "--redis-uri", redis_url, "--queue",
         queue_name, "--mongo-uri", mongo_uri, "--database", database_name, "--json"],
        check=False, env=env)
    assert result.returncode == 0, result.stderr.decode()
    outbox = orjson.loads(result.stdout)["outbox"]
    assert outbox["pending"] == 3 and outbox["oldest_pending_s"] >= 0
    human = await anyio.run_process(
        [sys.executable, "-m", "earnorm.events", "stats", "--redis-uri", redis_url, "--queue",
         queue_name, "--mongo-uri", mongo_uri, "--database", database_name], env=env)
    assert "3 pending" in human.stdout.decode()


async def test_a_relay_that_loses_redis_mid_batch_releases_its_claims_at_once(
    mongo_uri: str, database_name: str, redis_url: str, queue_name: str, redis: Redis
) -> None:
    await earnorm.init(mongo_uri=mongo_uri, database=database_name, redis_uri=redis_url,
                       event_config={"queue_name": queue_name, "outbox_relay": False})
    try:
        async with earnorm.transaction():
            await earnorm.event_bus.publish(Event(name="blip.x", data={}))
        env = earnorm.env
        from earnorm._config import EventConfig
        from earnorm.events._broker.connect import open_redis
        from earnorm.events._tools.embedded import free_port

        gone = EventBus(open_redis(f"redis://127.0.0.1:{free_port()}/0"),
                        EventConfig(queue_name=queue_name))
        with pytest.raises(RedisConnectionError):
            await OutboxRelay(gone, env.database).relay_once()
        await gone.close()
        # claims released: a healthy relay takes the entry now, not after claim_timeout (10 s)
        assert await OutboxRelay(earnorm.event_bus, env.database).relay_once() == 1
        assert await redis.llen(queue_name) == 1
    finally:
        await earnorm.close()


def _transient(message: str) -> Exception:
    return OperationFailure(message, code=112,
                            details={"errorLabels": ["TransientTransactionError"]})


@pytest.mark.parametrize("wrapped", [False, True], ids=["pymongo_error", "orm_database_error"])
async def test_run_in_transaction_reruns_the_block_on_a_transient_error_and_delivers_once(
    orm: Environment, redis: Redis, queue_name: str, wrapped: bool
) -> None:
    """The first try's document and outbox entry go with its abort; the second commits."""
    tries = 0

    async def block() -> str | None:
        nonlocal tries
        tries += 1
        member = Member(email=f"try{tries}@example.com")
        await member.create()  # its after_create hook dispatches member.created (the outbox)
        if tries == 1:
            error = _transient("WriteConflict (simulated)")
            if wrapped:  # what an ORM call raises for it
                raise DatabaseError("update failed") from error
            raise error
        return member.id

    member_id = await earnorm.run_in_transaction(block)
    assert tries == 2
    assert [m.email for m in await Member.find({})] == ["try2@example.com"]
    seen: Counter[str] = Counter()
    async with Consumer(bus=earnorm.event_bus, registry=counting_registry("#", seen)):
        await wait_until(lambda: len(seen) == 1, 10, message="the committed try's event")
    assert await redis.llen(queue_name) == 0 and max(seen.values()) == 1
    assert member_id


async def test_run_in_transaction_does_not_retry_other_errors_and_rolls_back(
    orm: Environment, redis: Redis, queue_name: str
) -> None:
    tries = 0

    async def block() -> None:
        nonlocal tries
        tries += 1
        await Member(email="once@example.com").create()
        raise ValueError("a bug, not a transient error")

    with pytest.raises(ValueError, match="a bug"):
        await earnorm.run_in_transaction(block)
    assert tries == 1
    assert await Member.count() == 0 and await _outbox(orm) == 0
    assert await redis.llen(queue_name) == 0


async def test_a_relay_stops_when_cancelled_as_it_is_nudged(orm: Environment) -> None:
    """A nudge that ends the relay's wait in the same turn as its cancellation must not eat
    the cancellation (asyncio.wait_for on 3.11 did: stop() then waited forever)."""
    for _ in range(20):
        relay = OutboxRelay(earnorm.event_bus, orm.database)
        relay.poll_interval = 30.0
        relay.start()
        task = relay._task
        assert task is not None
        await wait_until(lambda: _waiting_for_a_nudge(task), 5,  # noqa: B023
                         message="the relay waiting")
        relay.nudge()
        await anyio.lowlevel.checkpoint()  # the wait ends; the relay has yet to resume
        with anyio.fail_after(5):
            await relay.stop(drain_timeout=0.1)
        assert task.done()


def _waiting_for_a_nudge(task: Any) -> bool:
    """Whether the relay's task is suspended in its wait for a nudge (``Event.wait``, or
    ``asyncio.wait_for`` around it as the relay once waited)."""
    coro = task.get_coro()
    while coro is not None:
        if getattr(coro, "__qualname__", "") in ("Event.wait", "wait_for"):
            return True
        coro = getattr(coro, "cr_await", None)
    return False
