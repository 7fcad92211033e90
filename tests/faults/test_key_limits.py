"""Per-key concurrency holds across the fleet: a handler with ``concurrency_key=`` and
``max_concurrent=N`` runs for at most N events of one key at once over every consumer; the
others wait in Redis (not in a process), other keys are not held back, and a consumer killed
while it held keys frees them within its heartbeat timeout."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import anyio
import pytest

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from earnorm._errors import ConfigError
from earnorm.events import FailedJob
from tests.faults.workers import Worker, recorded
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


def intervals(record: Path) -> dict[str, dict[str, list[float]]]:
    """event id -> {"begin": [(time)], "end": [...], "key": key, "pid": [...]} from the record."""
    found: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line in record.read_text().splitlines() if record.exists() else []:
        parts = line.split()
        if parts[0] in ("begin", "end"):
            found[parts[1]][parts[0]].append(float(parts[3]))
            found[parts[1]]["pid"].append(float(parts[4]))
    return found


def overlaps(record: Path, most: int = 1) -> list[str]:
    """Keys on which more than ``most`` handlers ran at once. Only complete runs count: one
    whose process was killed has a begin and no end (its pid wrote nothing after the kill)."""
    runs: dict[tuple[str, str], list[float]] = {}
    by_key: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for line in record.read_text().splitlines():
        kind, event_id, key, at, pid = line.split()[:5]
        if kind == "begin":
            runs[(event_id, pid)] = [float(at)]
        elif kind == "end":
            begun = runs.pop((event_id, pid))
            by_key[key] += [(begun[0], 1), (float(at), -1)]
    crowded = []
    for key, edges in by_key.items():
        running = 0
        for _, step in sorted(edges):  # at one instant, an end (-1) before a begin
            running += step
            if running > most:
                crowded.append(key)
                break
    return crowded


def test_a_key_limit_is_declared_on_the_handler_and_a_bad_one_names_its_option() -> None:
    registry = HandlerRegistry()

    async def handle(event: Event) -> None: ...
    limit = registry.register("a.b", handle, concurrency_key="tenant.id",
                              max_concurrent=3).key_limit
    assert limit is not None and limit.max == 3
    assert limit.key_of(Event(name="a.b", data={"tenant": {"id": 7}})) == "tenant.id=7"
    with pytest.raises(ConfigError, match=r"max_concurrent=2 for 'a.c' needs a concurrency_key"):
        registry.register("a.c", handle, max_concurrent=2)
    with pytest.raises(ConfigError, match=r"max_concurrent for 'a.d' must be an integer >= 1"):
        registry.register("a.d", handle, concurrency_key="k", max_concurrent=0)
    with pytest.raises(ConfigError, match=r"concurrency_key for 'a.e' must be a dotted path"):
        registry.register("a.e", handle, concurrency_key="not a path")

    async def key_of(event: Event) -> str:
        return "k"
    with pytest.raises(ConfigError, match=r"plain \(not async\) function"):
        registry.register("a.f", handle, concurrency_key=key_of)

    async def batch(events: list[Event]) -> None: ...
    with pytest.raises(ConfigError, match=r"single events, not batches"):
        registry.register("a.g", batch, concurrency_key="k", batch_size=10)


async def test_one_key_waits_in_redis_while_other_keys_run(
    bus: EventBus, queue_name: str, redis_url: str,
) -> None:
    """Key "a" is busy with a slow event: its next one waits in Redis (stats() shows it, the
    consumer does not hold it), events of five other keys run meanwhile, and the waiter runs when
    the slot is given back. An event without the key is dead-lettered, not run unlimited."""
    release = anyio.Event()
    ran: list[tuple[str, int]] = []
    registry = HandlerRegistry()

    async def handle(event: Event) -> None:
        ran.append((event.data["tenant"], event.data["i"]))
        if event.data["i"] == 0 and event.data["tenant"] == "a":
            await release.wait()
    registry.register("key.work", handle, concurrency_key="tenant")
    async with Consumer(redis_url, queue_name=queue_name, registry=registry,
                        config={"heartbeat_interval": 0.2, "heartbeat_timeout": 1.0}):
        await bus.publish(Event(name="key.work", data={"tenant": "a", "i": 0}))
        await wait_until(lambda: ran == [("a", 0)], timeout=5, message="the slow event")
        await bus.publish(Event(name="key.work", data={"tenant": "a", "i": 1}))
        await bus.publish_batch([Event(name="key.work", data={"tenant": f"b{i}", "i": i})
                                 for i in range(5)])
        await wait_until(lambda: len(ran) == 6, timeout=5, message="the other keys' events")
        assert ("a", 1) not in ran

        async def waiting() -> bool:
            return (await bus.stats())["key_limited"] == {"1:tenant=a": 1}
        await wait_until(waiting, timeout=5, message="stats() to show the waiter")

        async def counted() -> bool:  # in the consumer's summary, published with its heartbeat
            return (await bus.stats())["consumers"][0]["key_waits"] == 1
        await wait_until(counted, timeout=10, message="the consumer to count its wait")
        release.set()
        await wait_until(lambda: ("a", 1) in ran, timeout=5, message="the waiter to run")
        await bus.publish(Event(name="key.work", data={"other": 1, "i": 9}))
        jobs: list[FailedJob] = []

        async def dead_lettered() -> bool:
            jobs[:] = await bus.get_failed_jobs()
            return bool(jobs)
        await wait_until(dead_lettered, timeout=5, message="the keyless event dead-lettered")
    assert jobs[0]["reason"] == "no_concurrency_key"
    assert "tenant" in str(jobs[0]["detail"])
    assert (await bus.stats())["key_limited"] == {}
    assert sorted(ran) == [("a", 0), ("a", 1)] + [(f"b{i}", i) for i in range(5)]


async def test_one_at_a_time_per_key_across_three_consumers(
    redis_url: str, queue_name: str, record: Path, bus: EventBus,
) -> None:
    """50 keys x 20 events, max_concurrent=1, 3 consumer processes: no two events of one key
    ever run at once (the handlers' own timestamps), every event runs once, and the whole run
    takes about what the keys allow (20 x 20 ms per key, the keys in parallel)."""
    keys, per_key = 50, 20
    events = [Event(name="fault.keyed", data={"key": f"k{k}", "i": i})
              for i in range(per_key) for k in range(keys)]
    await bus.publish_batch(events)
    started = time.monotonic()
    workers = [Worker(redis_url, queue_name, record) for _ in range(3)]
    try:
        await wait_until(lambda: len(recorded(record, "end")) == len(events), timeout=120,
                         interval=0.2, message="every keyed event to run")
        took = time.monotonic() - started
    finally:
        for worker in workers:
            worker.terminate()
    assert overlaps(record) == []
    ends = recorded(record, "end")
    assert len(ends) == len(events) and set(ends.values()) == {1}
    pids = {int(p) for run in intervals(record).values() for p in run["pid"]}
    assert len(pids) == 3, "all three consumers took part"
    print(f"50 keys x 20 events, one at a time per key, 3 consumers: {took:.1f} s "
          f"(floor {per_key * 0.02:.1f} s of handler time per key)")


async def test_a_killed_consumers_keys_are_freed_within_its_heartbeat_timeout(
    redis_url: str, queue_name: str, record: Path, bus: EventBus,
) -> None:
    """A consumer is killed while it runs the one event its key allows; another event of that
    key waits in Redis meanwhile. Within the heartbeat timeout (1 s here) of the kill, the
    waiter runs elsewhere, and the killed event runs again once recovered, never beside it."""
    slow = Worker(redis_url, queue_name, record, env={"EARNORM_TEST_KEYED_SLEEP": "60"})
    fast = None
    try:
        first = Event(name="fault.keyed", data={"key": "k", "i": 0})
        await bus.publish(first)
        await wait_until(lambda: recorded(record, "begin")[first.id] == 1, timeout=30,
                         message="the slow consumer to start the first event")
        fast = Worker(redis_url, queue_name, record)
        second = Event(name="fault.keyed", data={"key": "k", "i": 1})
        await bus.publish(second)

        async def waiting() -> bool:
            return (await bus.stats())["key_limited"] == {"1:key=k": 1}
        await wait_until(waiting, timeout=30, message="the second event to wait for the key")
        slow.kill()
        killed = time.time()
        await wait_until(lambda: recorded(record, "end")[second.id] == 1
                         and recorded(record, "end")[first.id] == 1, timeout=30,
                         message="both events to run after the kill")
    finally:
        slow.kill()
        if fast is not None:
            fast.terminate()
    runs = intervals(record)
    assert runs[second.id]["begin"][0] - killed < 1.0 + 1.0, "freed within the timeout"
    assert overlaps(record) == []  # the killed run has no end: only complete runs are checked
    assert len(runs[first.id]["begin"]) == 2  # killed once, run again


async def test_a_large_event_waits_for_its_key_by_reference(
    bus: EventBus, queue_name: str, redis_url: str,
) -> None:
    """A 1 MB event (held in a key of its own) that finds its key busy waits under a parked
    key, unread by any script, and runs intact once the slot is free; no key is left over."""
    release = anyio.Event()
    ran: list[int] = []
    registry = HandlerRegistry()

    async def handle(event: Event) -> None:
        ran.append(len(event.data["pad"]))
        if not ran[1:]:
            await release.wait()
    registry.register("key.big", handle, concurrency_key="tenant")
    async with Consumer(redis_url, queue_name=queue_name, registry=registry):
        await bus.publish(Event(name="key.big", data={"tenant": "a", "pad": ""}))
        await wait_until(lambda: ran == [0], timeout=5, message="the first event")
        await bus.publish(Event(name="key.big", data={"tenant": "a", "pad": "x" * 2**20}))

        async def parked() -> bool:
            return bool([k async for k in bus.redis.scan_iter(match=f"{queue_name}:parked:*")])
        await wait_until(parked, timeout=5, message="the large event to wait by reference")
        release.set()
        await wait_until(lambda: ran == [0, 2**20], timeout=10, message="the large event")
    left = [k async for k in bus.redis.scan_iter(match=f"{queue_name}:*")
            if b":parked:" in k or b":held:" in k or b":lease:" in k or b":keywait" in k]
    assert left == []
