"""Redis Cluster: a real 3-master/3-replica cluster on loopback (``tests.topology``)."""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime

import anyio
import pytest
from redis.crc import key_slot

from earnorm import (
    Consumer,
    ConsumerGroup,
    Event,
    EventBus,
    HandlerRegistry,
    NotReplicated,
    Schedule,
)
from earnorm.events._broker.keys import Keys, text
from earnorm.events._wire import encode
from tests.helpers import Seen, recording_registry, riding_out, wait_until
from tests.processes import consumer_process, counting_env, publish_counted, stop
from tests.topology import Cluster, redis_cluster

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with redis_cluster() as started:
        yield started


async def test_a_queues_keys_carry_a_hash_tag_and_share_one_slot(cluster: Cluster) -> None:
    bus = await EventBus.connect(cluster.url, queue_name="orders")
    try:
        assert bus.config.queue_name == "{orders}"
        keys = Keys.for_queue(bus.config)
        names = [*keys.ready, keys.delayed, keys.failed, keys.stats, keys.inflight("c1"),
                 keys.landing("c1"), keys.recovered]
        assert len({key_slot(n.encode()) for n in names}) == 1
    finally:
        await bus.close()
    tagged = await EventBus.connect(cluster.url, queue_name="{orders}:high")
    assert tagged.config.queue_name == "{orders}:high"  # a name with a tag is kept
    await tagged.close()


async def test_ten_thousand_events_over_three_queues_on_three_shards_each_handled_once(
    cluster: Cluster
) -> None:
    queues = cluster.queues_on_distinct_masters(3)
    handled: Counter[str] = Counter()
    registry = HandlerRegistry()

    async def handle(event: Event) -> None:
        handled[event.id] += 1
    registry.register("spread.*", handle)
    ids: list[str] = []
    for queue in queues:
        bus = await EventBus.connect(cluster.url, queue_name=queue)
        for start in range(0, 3334, 500):
            count = min(500, 3334 - start)
            ids += await bus.publish_batch([Event(name="spread.x", data={"i": i})
                                            for i in range(count)])
        await bus.close()
    assert len(ids) >= 10_000
    async with ConsumerGroup(cluster.url, queues=queues, registry=registry,
                             concurrency=150) as group:
        await wait_until(lambda: len(handled) == len(ids), 120, interval=0.1,
                         message="every event handled")
        masters = {cluster.slot_owner()[key_slot(c.config.queue_name.encode())] for c in group}
        assert len(masters) == 3  # one queue per shard
        await wait_until(lambda: _all_acked(group), 10, message="acks flushed")
    assert set(handled) == set(ids)
    assert max(handled.values()) == 1


async def _all_acked(group: ConsumerGroup) -> bool:
    totals = [await c.bus.stats() for c in group]
    return all(s["inflight"] == 0 and s["ready_total"] == 0 for s in totals)


async def test_a_link_callback_for_a_queue_on_another_shard_is_delivered_there(
    cluster: Cluster
) -> None:
    """The settle script cannot reach another slot: the follow-up is pushed before it."""
    first_queue, second_queue = cluster.queues_on_distinct_masters(2)
    ran: list[tuple[str, object]] = []
    registry = HandlerRegistry()

    async def first(event: Event) -> str:
        ran.append((event.name, event.args))
        return "result"

    async def second(event: Event) -> None:
        ran.append((event.name, event.args))
    registry.register("cb.first", first)
    registry.register("cb.second", second)
    link = {"task": "cb.second", "args": ["linked"], "kwargs": {}, "immutable": False,
            "subtask_type": None, "options": {"queue": second_queue}}
    bus = await EventBus.connect(cluster.url, queue_name=first_queue)
    raw = encode.encode_call("cb.first", str(uuid.uuid4()), [], {}, bus.config.queue_name,
                               embed={"callbacks": [link]})
    await bus.redis.lpush(bus.config.queue_name, raw)
    async with ConsumerGroup(bus=bus, queues=[first_queue, second_queue], registry=registry,
                             concurrency=4):
        await wait_until(lambda: len(ran) == 2, 15, message="the event and its link")
    await bus.close()
    assert ran[1] == ("cb.second", ("result", "linked"))


async def test_a_master_dies_its_replica_takes_over_and_no_acknowledged_publish_is_lost() -> None:
    with redis_cluster() as fresh:
        await _failover_story(fresh)


async def _failover_story(cluster: Cluster) -> None:
    queue = cluster.queues_on_distinct_masters(1)[0]
    seen: Counter[int] = Counter()
    registry = HandlerRegistry()

    async def handle(event: Event) -> None:
        seen[event.data["i"]] += 1
    registry.register("fo.*", handle)
    config = {"queue_name": queue, "min_replicas_ack": 1, "min_replicas_timeout": 0.5,
              "heartbeat_interval": 0.2, "heartbeat_timeout": 2.0,
              "retry_policy": {"max_retries": 20, "interval_start": 0.2,
                               "interval_step": 0.2, "interval_max": 1.0}}
    bus = await EventBus.connect(cluster.url, config)
    acked: set[int] = set()
    not_replicated: set[int] = set()
    after_failover: set[int] = set()
    victim = cluster.master_for("{" + queue + "}")
    async with ConsumerGroup(bus=bus, queues=[bus.config.queue_name], registry=registry,
                             concurrency=20):
        failed_over_at = None
        i = 0
        started = time.monotonic()
        while time.monotonic() - started < 30:
            try:
                await bus.publish(Event(name="fo.x", data={"i": i}))
                acked.add(i)
                if failed_over_at is not None:
                    after_failover.add(i)
            except NotReplicated:
                not_replicated.add(i)
            i += 1
            if i == 300:
                victim.kill()
                failed_over_at = time.monotonic()
            if not_replicated and victim.process.poll() is not None:
                # The promoted replica has no replica of its own until the old master
                # rejoins: until then publishes say NotReplicated rather than pretend.
                victim = cluster.restart(victim)
            if len(after_failover) >= 300:
                break
            await anyio.sleep(0.002)
        assert len(after_failover) >= 300, "publishing did not continue after the failover"
        assert cluster.master_for("{" + queue + "}").port != victim.port
        await wait_until(lambda: acked <= set(seen), 60, interval=0.1,
                         message="every acknowledged publish handled")
    await bus.close()
    assert acked <= set(seen)  # no acknowledged publish lost


async def test_the_consumer_stays_up_while_every_node_of_the_cluster_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every node gone at once: whatever redis-py's cluster client raises for it (a connection
    error, or ``RedisClusterException`` when no node can give the slot map), the consumer waits
    it out like any outage and consumes again once the nodes are back."""
    seen: list[int] = []
    registry = recording_registry("outage.*", seen)
    with redis_cluster(masters=3, replicas=0) as small:
        bus = await EventBus.connect(small.url, riding_out("outage"))
        group = ConsumerGroup(bus=bus, queues=[bus.config.queue_name], registry=registry,
                              concurrency=10)
        async with group:
            await bus.publish(Event(name="outage.x", data={"i": 0}))
            await wait_until(lambda: seen == [0], 10, message="handled before the outage")
            for node in list(small.nodes):
                node.kill()
            # The loops meet the outage and wait it out (a crash ends the group's task).
            await wait_until(lambda: "Redis is unreachable (" in caplog.text, 10,
                             message="the consumer to meet the outage")
            assert group._background is not None and not group._background.done()
            for node in list(small.nodes):
                small.restart(node)
            small.wait_healthy()
            await bus.publish(Event(name="outage.x", data={"i": 1}))
            await wait_until(lambda: seen == [0, 1], 30, interval=0.1,
                             message="handled after every node came back")
            assert not group._background.done()
        await bus.close()


async def test_periodic_ticks_fire_once_across_consumers_on_a_cluster(cluster: Cluster) -> None:
    """The schedule's compare-and-set and the push share the queue's slot (its hash tag)."""
    queue = cluster.queues_on_distinct_masters(1)[0]
    schedule = Schedule("cluster.tick", every=0.5)
    seen = Seen()
    registry = seen.registry("cluster.tick")
    ids, ticks = seen.ids, seen.ticks

    def consumer() -> Consumer:
        return Consumer(cluster.url, queue_name=queue, registry=registry, schedules=[schedule],
                        concurrency=4)
    async with consumer(), consumer(), consumer():
        await wait_until(lambda: len(ticks) >= 6, 15, message="6 ticks")
    assert max(ids.values()) == 1 and len(ticks) == len(set(ticks)), "a tick fired twice"
    stamps = sorted(datetime.fromisoformat(t).timestamp() for t in ticks)
    assert {round(b - a, 3) for a, b in itertools.pairwise(stamps)} == {0.5}, "a tick missing"


async def test_a_revoke_on_a_cluster_reaches_every_consumer_without_a_broadcast(
    cluster: Cluster,
) -> None:
    """No pub/sub fan-out on a cluster (Celery does not run there): two consumers follow the
    queue's revoked set, in the queue's slot; a revoked delayed event and a revoked ready one
    never run, the others do."""
    queue = cluster.queues_on_distinct_masters(1)[0]
    seen: list[int] = []
    registry = recording_registry("cluster.revoked", seen)
    bus = await EventBus.connect(cluster.url, queue_name=queue)
    try:
        later = await bus.publish(Event(name="cluster.revoked", data={"i": 1}), delay=1)
        now = await bus.publish(Event(name="cluster.revoked", data={"i": 2}))
        await bus.publish(Event(name="cluster.revoked", data={"i": 3}), delay=1)
        await bus.revoke([later, now])

        def consumer() -> Consumer:
            return Consumer(cluster.url, queue_name=queue, registry=registry, concurrency=4)
        async with consumer(), consumer():
            await wait_until(lambda: 3 in seen, 15, message="the kept one ran")

            async def both_acked() -> bool:
                return (await bus.stats())["counters"].get("revoked") == 2

            await wait_until(both_acked, 10, message="the revoked ones acked, not run")
    finally:
        await bus.close()
    assert seen == [3]


def _migrate_slot(cluster: Cluster, slot: int, source: int, target: int) -> int:
    """Move ``slot`` from the master on port ``source`` to the one on ``target`` the way
    ``redis-cli --cluster reshard`` does (IMPORTING / MIGRATING, MIGRATE in small batches, then
    SETSLOT NODE everywhere), slowly, so that commands meet ASK and TRYAGAIN meanwhile."""
    def node_id(port: int) -> str:
        with cluster.client(port) as client:
            return str(client.execute_command("CLUSTER MYID").decode())

    source_id, target_id = node_id(source), node_id(target)
    moved = 0
    with cluster.client(source) as src, cluster.client(target) as dst:
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 5):
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(0.05)
    for port in cluster.masters():
        with cluster.client(port) as client:
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    return moved


async def test_a_queues_slot_migrates_to_another_master_mid_stream_and_nothing_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Resharding while publishing (immediate and delayed events) and consuming: scripts meet
    ASK/TRYAGAIN while the slot's keys are split, then MOVED; every acknowledged publish is
    handled, and the consumer reports a master change, not a restart that lost data."""
    seen: list[int] = []
    registry = recording_registry("reshard.*", seen)
    with redis_cluster(masters=3, replicas=0) as small:
        queue = small.queues_on_distinct_masters(1)[0]
        slot = key_slot(("{" + queue + "}").encode())
        source = small.slot_owner()[slot]
        target = next(port for port in small.masters() if port != source)
        bus = await EventBus.connect(small.url, riding_out(queue, interval_start=0.1))
        acked: set[int] = set()
        moving = anyio.Event()
        async with ConsumerGroup(bus=bus, queues=[bus.config.queue_name], registry=registry,
                                 concurrency=20):
            async def publish_until_moved() -> None:
                i = 0
                while not moving.is_set() or i < 600:
                    delay = 0.05 if i % 5 == 0 else None
                    await bus.publish(Event(name="reshard.x", data={"i": i}), delay=delay)
                    acked.add(i)
                    i += 1
                    await anyio.sleep(0.002)

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish_until_moved)
                await wait_until(lambda: len(acked) >= 200, 20, message="a stream going")
                moved = await anyio.to_thread.run_sync(
                    lambda: _migrate_slot(small, slot, source, target))
                moving.set()
            assert small.slot_owner()[slot] == target and moved > 0
            await wait_until(lambda: acked <= set(seen), 30, interval=0.1,
                             message="every acknowledged publish handled")
            await wait_until(lambda: "the queue's slot moved" in caplog.text, 10,
                             message="the master change noticed")
        await bus.close()
    assert "Redis restarted" not in caplog.text


async def test_a_consumer_killed_on_a_cluster_hands_its_messages_to_the_next(
    cluster: Cluster
) -> None:
    """SIGKILL mid-drain: the next consumer finds its heartbeat expired and recovers what it
    held, with the recovery scripts running in the queue's slot."""
    queue = cluster.queues_on_distinct_masters(1)[0]
    bus = await EventBus.connect(cluster.url, queue_name=queue)
    ids = await publish_counted(bus, 600)
    env = counting_env(0.02)
    handled = f"{queue}:handled"

    async def counted() -> int:
        return int(await bus.redis.hlen(handled))
    with consumer_process(cluster.url, queue, concurrency=20, extra_env=env) as first:
        await wait_until(lambda: _at_least(counted, 100), 30, message="100 handled")
        stop(first)  # SIGKILL, with ~20 running and more fetched
    with consumer_process(cluster.url, queue, concurrency=20, extra_env=env):
        await wait_until(lambda: _at_least(counted, len(ids)), 60, interval=0.2,
                         message="every event handled after the recovery")
    counts = {text(k): int(v) for k, v in (await bus.redis.hgetall(handled)).items()}
    await bus.redis.delete(handled)
    await bus.close()
    assert set(counts) == set(ids)  # nothing lost
    assert sum(counts.values()) - len(ids) <= 60  # re-run: at most what the first one held


async def _at_least(count: Callable[[], Awaitable[int]], n: int) -> bool:
    return await count() >= n
