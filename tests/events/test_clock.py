"""The estimate of Redis's clock: the tightest reading wins, so due times do not drift late."""

from __future__ import annotations

import time

import pytest

from earnorm import EventBus
from earnorm.events._wire.clock import ServerClock


def test_a_slow_reading_does_not_replace_a_tight_one() -> None:
    clock = ServerClock()
    t = 1_000.0
    clock.observe(server_ms=t * 1000 + 0.05, sent=t, received=t + 0.0001)  # 0.1 ms, exact
    # 10 ms round trip, Redis read its clock at the very end (like a first, connecting call).
    clock.observe(server_ms=(t + 10.01) * 1000, sent=t + 10.0, received=t + 10.01)
    assert abs(clock.offset_ms) < 0.1
    assert clock.uncertainty_ms == pytest.approx(0.05)


def test_a_tighter_reading_replaces_a_slow_one_and_an_old_one_gives_way() -> None:
    clock = ServerClock(max_age=0.0)
    t = 1_000.0
    clock.observe(server_ms=(t + 0.01) * 1000, sent=t, received=t + 0.01)
    assert clock.offset_ms == pytest.approx(5.0)
    time.sleep(0.001)  # older than max_age: the next reading is kept whatever its round trip
    clock.observe(server_ms=(t + 1.0) * 1000 + 7000, sent=t + 1.0, received=t + 1.02)
    assert clock.offset_ms == pytest.approx(7000 - 10.0)


def test_whole_millisecond_readings_count_their_resolution() -> None:
    clock = ServerClock()
    t = 1_000.0
    clock.observe(server_ms=t * 1000, sent=t, received=t, resolution_ms=1.0)
    assert clock.offset_ms == pytest.approx(0.5) and clock.uncertainty_ms == pytest.approx(0.5)


@pytest.mark.anyio
async def test_a_bus_on_the_same_machine_agrees_with_redis_within_its_bound(
    redis_url: str, queue_name: str
) -> None:
    """Redis here shares this machine's clock: the true offset is 0, and the kept reading
    bounds the estimate's error by half its round trip."""
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    try:
        clock = bus.clock
        assert abs(clock.offset_ms) <= clock.uncertainty_ms + 0.01  # TIME is in microseconds
    finally:
        await bus.close()
