"""A quiet queue costs one fetch per blocking wait. A fetch that reads every ready list to its
end says so, and the consumer's next fetch is the blocking wait itself (BLMOVE with the fetch
script behind it), not a non-blocking fetch first that can only come back empty: one round
trip fewer between a message and its handler, and per idle poll."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from contextlib import suppress

import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from earnorm.events._broker.scripts import FETCH, for_server
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

FETCH_SHAS = {hashlib.sha1(for_server(FETCH, flags).encode()).hexdigest()
              for flags in (True, False)}


async def count_fetches(redis_url: str, queue_name: str, counts: Counter[str],
                        ready: asyncio.Event) -> None:
    """Count the consumer's blocking waits and fetch scripts on ``queue_name``, as run."""
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        async with client.monitor() as monitor:
            ready.set()
            async for command in monitor.listen():
                words = command["command"].split(" ", 4)
                if words[0] == "BLMOVE" and words[1].startswith(queue_name):
                    counts["waits"] += 1
                elif (words[0] == "EVALSHA" and words[1] in FETCH_SHAS
                      and words[3].startswith(queue_name)):
                    counts["fetches"] += 1
    finally:
        await client.aclose()


async def test_a_quiet_consumer_sends_one_fetch_per_blocking_wait(
    redis_url: str, queue_name: str, redis: Redis,
) -> None:
    handled: list[int] = []

    async def on_quiet(event: Event) -> None:
        handled.append(event.data["n"])

    registry = HandlerRegistry()
    registry.register("quiet.one", on_quiet)
    counts: Counter[str] = Counter()
    ready = asyncio.Event()
    watcher = asyncio.create_task(count_fetches(redis_url, queue_name, counts, ready))
    await asyncio.wait_for(ready.wait(), 10)
    bus = await EventBus.connect(redis_url, {"queue_name": queue_name})
    try:
        async with Consumer(bus=bus, registry=registry, concurrency=2, poll_interval=0.1):
            for n in range(10):  # one at a time, each into a waiting consumer
                waits = counts["waits"]
                await wait_until(lambda w=waits: counts["waits"] > w, 10,  # type: ignore[misc]
                                 message="the consumer waits again")
                await bus.publish(Event(name="quiet.one", data={"n": n}))
                await wait_until(lambda n=n: len(handled) == n + 1, 10,  # type: ignore[misc]
                                 message=f"event {n} handled")
            idle_from = counts["waits"]
            await wait_until(lambda: counts["waits"] >= idle_from + 10, 10,
                             message="ten idle polls")
    finally:
        await bus.close()
        watcher.cancel()
        with suppress(asyncio.CancelledError):
            await watcher
    assert handled == list(range(10))
    # Each wait carries its fetch. The old way sent a non-blocking fetch before every wait:
    # twice as many fetches as waits.
    assert counts["fetches"] <= counts["waits"] + 2, dict(counts)
