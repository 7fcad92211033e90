"""Debounce by key: of a burst of publishes with one ``debounce_key``, only the last runs,
``debounce`` seconds after it; each publish replaces the pending one atomically in Redis."""

from __future__ import annotations

import time

import pytest

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from earnorm._errors import EventValidationError
from earnorm.events.utils import dispatch_model_event
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


async def drain_done(bus: EventBus) -> None:
    """Until nothing is delayed, ready or in flight: no replaced event runs later."""
    async def drained() -> bool:
        stats = await bus.stats()
        return stats["delayed"] == 0 and stats["ready_total"] == 0 and stats["inflight"] == 0
    await wait_until(drained, timeout=5, message="nothing else queued")


async def test_a_burst_of_a_hundred_runs_once_after_the_quiet_period(
    bus: EventBus, queue_name: str, redis_url: str,
) -> None:
    ran: list[tuple[int, float]] = []
    registry = HandlerRegistry()

    async def reindex(event: Event) -> None:
        ran.append((event.data["i"], time.monotonic()))
    registry.register("search.reindex", reindex)
    other = Event(name="search.reindex", data={"i": -1})
    async with Consumer(redis_url, queue_name=queue_name, registry=registry):
        await bus.publish(other, debounce_key="doc:2", debounce=0.3)  # another key: its own
        for i in range(100):
            await bus.publish(Event(name="search.reindex", data={"i": i}),
                              debounce_key="doc:1", debounce=0.5)
        last = time.monotonic()
        assert await bus.redis.zcard(bus.broker.keys.delayed) <= 2
        await wait_until(lambda: len(ran) == 2, timeout=5, message="one run per key")
        await drain_done(bus)
    assert [i for i, _ in ran] == [-1, 99]
    assert ran[1][1] - last >= 0.5 * 0.95, "the quiet period counts from the last publish"


async def test_nothing_more_runs_after_the_burst(
    bus: EventBus, queue_name: str, redis_url: str,
) -> None:
    """The replaced events are gone from Redis, not queued: after the one run, the delayed set
    and the ready lists are empty and the debounce key is the run's."""
    ran: list[int] = []
    registry = HandlerRegistry()

    async def handle(event: Event) -> None:
        ran.append(event.data["i"])
    registry.register("doc.touched", handle)
    for i in range(20):
        await bus.publish(Event(name="doc.touched", data={"i": i}),
                          debounce_key="d", debounce=0.2)
    async with Consumer(redis_url, queue_name=queue_name, registry=registry) as consumer:
        await wait_until(lambda: ran == [19], timeout=5, message="the last event")
        await drain_done(bus)
    assert ran == [19] and consumer.processed == 1


async def test_a_replaced_large_event_leaves_no_key(bus: EventBus) -> None:
    keys = bus.broker.keys
    for i in range(3):
        await bus.publish(Event(name="doc.big", data={"pad": "x" * 400_000, "i": i}),
                          debounce_key="big", debounce=60)
    later = [k async for k in bus.redis.scan_iter(match=f"{keys.queue}:later:*")]
    assert len(later) == 1 and await bus.redis.ttl(later[0]) == -1  # the pending one, kept
    assert await bus.redis.zcard(keys.delayed) == 1


async def test_debounce_arguments_are_checked(bus: EventBus) -> None:
    event = Event(name="a.b", data={})
    with pytest.raises(EventValidationError, match="debounce must be a positive number"):
        await bus.publish(event, debounce_key="k")
    with pytest.raises(EventValidationError, match="debounce_key must be a non-empty string"):
        await bus.publish(event, debounce=1)
    with pytest.raises(EventValidationError, match="does not go with delay= or dedup_key="):
        await bus.publish(event, debounce_key="k", debounce=1, delay=5)


async def test_a_save_burst_of_one_document_dispatches_one_model_event(
    bus: EventBus, queue_name: str, redis_url: str,
) -> None:
    seen: list[str] = []
    registry = HandlerRegistry()

    async def on_saved(event: Event) -> None:
        seen.append(event.data["id"])
    registry.register("user.saved", on_saved)
    for _ in range(10):
        await dispatch_model_event(bus, "User", "saved", "u1", {"name": "a"}, debounce=0.2)
    await dispatch_model_event(bus, "User", "saved", "u2", {"name": "b"}, debounce=0.2)
    async with Consumer(redis_url, queue_name=queue_name, registry=registry):
        await wait_until(lambda: sorted(seen) == ["u1", "u2"], timeout=5,
                         message="one event per document")
        await drain_done(bus)
    assert sorted(seen) == ["u1", "u2"]
