"""``event_bus.stats()``: sizes, counters, consumers, processing times and queue latency."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from earnorm.events._telemetry.timings import ProcessingTimes, merge, percentiles
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

FAST = {"heartbeat_interval": 0.1, "heartbeat_timeout": 2.0}


@pytest.fixture
def bus_config() -> dict[str, Any]:
    return {**FAST,
            "retry_policy": {"max_retries": 1, "interval_start": 0.05, "interval_step": 0}}


# ---------------------------------------------------------------- the histogram


def test_percentiles_are_within_five_percent() -> None:
    # Every sample binned (no stride): the only error left is the bucket's, at most
    # 2 ** (1/16) - 1 = 4.4% from its geometric midpoint. A stride sample of a random
    # set adds its own sampling error on top, which a fixed bound cannot promise.
    values = [random.uniform(0.001, 0.101) for _ in range(20_000)]
    timings = ProcessingTimes(max_binned=len(values))
    for v in values:
        timings.record(v)
    got = percentiles(timings.histogram())
    ranked = sorted(values)
    assert got["count"] == 20_000
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        true_ms = ranked[int(q * len(ranked)) - 1] * 1000
        value = got[name]
        assert isinstance(value, float)
        assert abs(value - true_ms) / true_ms < 0.05, (name, value, true_ms)


def test_many_samples_are_counted_by_stride_with_their_weight() -> None:
    timings = ProcessingTimes(max_binned=1000)
    for _ in range(50_000):
        timings.record(0.002)
    histogram = timings.histogram()
    assert sum(histogram.values()) == 50_000
    assert percentiles(histogram)["p99"] == pytest.approx(2.0, rel=0.05)


def test_histograms_from_several_consumers_add_up() -> None:
    fast, slow = ProcessingTimes(), ProcessingTimes()
    for _ in range(900):
        fast.record(0.001)
    for _ in range(100):
        slow.record(0.1)
    # As JSON object keys they arrive as strings.
    merged = merge([{str(k): v for k, v in fast.histogram().items()}, slow.histogram()])
    got = percentiles(merged)
    assert got["count"] == 1000
    assert got["p50"] == pytest.approx(1.0, rel=0.05)
    assert got["p95"] == pytest.approx(100.0, rel=0.05)


def test_an_empty_window_has_no_percentiles() -> None:
    assert percentiles({}) == {"count": 0, "p50": None, "p95": None, "p99": None}


# ---------------------------------------------------------------- on real Redis


async def test_sizes_per_priority_delayed_and_queue_latency(bus: EventBus) -> None:
    old = datetime.now(UTC) - timedelta(seconds=30)
    await bus.publish(Event(name="a.b", timestamp=old))
    await bus.publish_batch([Event(name="a.b"), Event(name="a.b")])
    await bus.publish_batch([Event(name="a.b")] * 2, priority=9)
    await bus.publish(Event(name="a.b"), priority=4)
    await bus.publish(Event(name="a.b"), delay=60)
    stats = await bus.stats()
    assert stats["ready"] == {0: 3, 3: 1, 6: 0, 9: 2}
    assert stats["ready_total"] == 6
    assert (stats["delayed"], stats["inflight"], stats["failed"]) == (1, 0, 0)
    assert stats["consumers"] == []
    assert stats["counters"] == {"processed": 0, "failed": 0, "retried": 0, "unhandled": 0,
                                 "revoked": 0}
    # The oldest waiting event (at the consuming end of the list) was published 30 s ago.
    latency = stats["latency_s"]
    assert latency is not None and 30 <= latency < 40


async def test_an_overdue_delayed_event_counts_for_latency(bus: EventBus) -> None:
    await bus.broker.schedule(b'{"not": "promoted yet"}', 0, bus.now_ms() - 5000)
    stats = await bus.stats()
    assert stats["ready_total"] == 0
    latency = stats["latency_s"]
    assert latency is not None and 4.9 <= latency < 10  # both clocks are Redis's, give or take


async def test_an_empty_queue_has_no_latency(bus: EventBus) -> None:
    await bus.publish(Event(name="a.b"), delay=60)
    assert (await bus.stats())["latency_s"] is None


async def test_inflight_and_live_consumers_with_their_heartbeat(bus: EventBus) -> None:
    release = anyio.Event()
    registry = HandlerRegistry()

    async def blocked(event: Event) -> None:
        await release.wait()

    registry.register("a.b", blocked)
    async with Consumer(bus=bus, registry=registry) as consumer:
        await bus.publish_batch([Event(name="a.b")] * 3)
        await wait_until(lambda: _stat_is(bus, "inflight", 3), 10, message="3 in flight")
        stats = await bus.stats()
        [me] = stats["consumers"]
        assert me["id"] == consumer.consumer_id
        assert me["alive"] is True
        age = me["last_heartbeat_age_s"]
        assert age is not None and 0 <= age < 1.5
        await wait_until(lambda: _running_is(bus, 3), 10, message="the summary to show 3")
        release.set()
    await wait_until(lambda: _stat_is(bus, "inflight", 0), 10)
    # A consumer that stopped is gone from the list (and its summary with it).
    assert (await bus.stats())["consumers"] == []
    assert not await bus.redis.hexists(bus.broker.keys.monitor, consumer.consumer_id)


async def _stat_is(bus: EventBus, key: str, value: int) -> bool:
    stats: dict[str, Any] = dict(await bus.stats())
    return bool(stats[key] == value)


async def _running_is(bus: EventBus, n: int) -> bool:
    consumers = (await bus.stats())["consumers"]
    return bool(consumers and consumers[0]["running"] == n)


async def test_stats_under_load_match_what_was_published(bus: EventBus) -> None:
    good, bad = 1500, 20
    registry = HandlerRegistry()

    async def handle(event: Event) -> None:
        if event.data["bad"]:
            raise ValueError("bad")
        await anyio.sleep(0.02)

    registry.register("load.test", handle)
    events = [Event(name="load.test", data={"bad": i < bad}) for i in range(good + bad)]
    random.shuffle(events)
    async with Consumer(bus=bus, registry=registry, concurrency=200):
        await bus.publish_batch(events)
        await wait_until(lambda: _counters_are(bus, good, bad, bad), 20, message="the counters")
        # Each run of a handler is timed: the good events once, the bad ones twice.
        await wait_until(lambda: _timed(bus, good + 2 * bad), 10, message="the timings")
        stats = await bus.stats()
    assert (stats["ready_total"], stats["delayed"], stats["inflight"]) == (0, 0, 0)
    assert stats["failed"] == bad
    timing = stats["processing_ms"]
    p50, p95, p99 = timing["p50"], timing["p95"], timing["p99"]
    assert p50 is not None and p95 is not None and p99 is not None
    assert 19 <= p50 <= p95 <= p99 < 2000
    assert timing["window_s"] == 60


async def _counters_are(bus: EventBus, processed: int, failed: int, retried: int) -> bool:
    counters = (await bus.stats())["counters"]
    return bool(counters == {"processed": processed, "failed": failed, "retried": retried,
                             "unhandled": 0, "revoked": 0})


async def _timed(bus: EventBus, count: int) -> bool:
    return bool((await bus.stats())["processing_ms"]["count"] == count)


async def test_counters_persist_across_consumers(bus: EventBus) -> None:
    registry = HandlerRegistry()

    async def handle(event: Event) -> None: ...

    registry.register("a.b", handle)
    for _ in range(2):
        async with Consumer(bus=bus, registry=registry) as consumer:
            await bus.publish_batch([Event(name="a.b")] * 5)
            await wait_until(lambda: consumer.processed == 5, 10)
    # Stopping reports what no later fetch carried.
    assert (await bus.stats())["counters"]["processed"] == 10
