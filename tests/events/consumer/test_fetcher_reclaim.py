"""After a fetch whose reply may have been lost, the fetcher hands back what its in-flight hash
holds that it never saw; the messages of the fetch that just succeeded are not among them."""

from __future__ import annotations

import asyncio

import pytest

from earnorm import Event, EventBus
from earnorm.events.consumer._fetcher import Fetcher
from earnorm.events.consumer._resilient import RedisHealth
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


async def test_the_first_fetch_after_a_failure_keeps_its_messages(bus: EventBus) -> None:
    broker = bus.broker
    fetcher = Fetcher(broker, "c-reclaim", prefetch=10, poll_interval=0.2, max_bytes=1 << 20,
                      health=RedisHealth())
    # What a fetch that failed on the client side leaves: maybe an orphan in flight.
    fetcher._orphans_possible = True
    job = await bus.publish(Event(name="user.created", data={"n": 1}))
    running = asyncio.create_task(fetcher.run())
    try:
        item = await asyncio.wait_for(fetcher.take(), 10)
        assert item is not None
        await wait_until(lambda: not fetcher._orphans_possible, 10, message="the reclaim ran")
        inflight = {int(f) for f in await bus.redis.hkeys(broker.keys.inflight("c-reclaim"))}
        extra = len(fetcher.buffer)
    finally:
        fetcher.stop()
        await running
    field, raw, _ = item
    assert job.encode() in raw
    # Handed back, it would be out of field 1 (and fetched again into another): run twice.
    assert inflight == {field} and extra == 0, (inflight, extra)
