"""Periodic events across several consumers, on a real Redis: each tick fires once."""

from __future__ import annotations

import itertools
import sys
from datetime import datetime

import anyio
import orjson
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry, Schedule
from tests.helpers import Seen, wait_until

pytestmark = pytest.mark.anyio


def _consumer(redis_url: str, queue: str, seen: Seen, schedule: Schedule,
              metrics: bool = False) -> Consumer:
    return Consumer(redis_url, queue_name=queue, registry=seen.registry(schedule.name),
                    schedules=[schedule], concurrency=4, metrics=metrics)


def _ticks_counted(consumer: Consumer, outcome: str) -> float:
    """``earnorm_schedule_ticks_total{outcome=...}`` in the consumer's /metrics page."""
    assert consumer._metrics is not None
    page = consumer._metrics.generate()[0].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith("earnorm_schedule_ticks_total{")
               and f'outcome="{outcome}"' in line)


async def test_three_consumers_fire_each_tick_once_and_a_restart_adds_no_duplicate(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    schedule = Schedule("tick.second", every=1)
    seen = Seen()
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    async with _consumer(redis_url, queue_name, seen, schedule), \
            _consumer(redis_url, queue_name, seen, schedule):
        async with _consumer(redis_url, queue_name, seen, schedule):
            await wait_until(lambda: len(seen.ticks) >= 5, 10, message="5 ticks")
        # one of the three stopped; a new one starts in its place
        async with _consumer(redis_url, queue_name, seen, schedule):
            await wait_until(lambda: len(seen.ticks) >= 10, 10, message="10 ticks")
    await bus.close()
    assert max(seen.ids.values()) == 1, "an event was handled twice"
    assert len(seen.ticks) == len(set(seen.ticks)), "a tick fired twice"
    assert 10 <= len(seen.ticks) <= 12
    ticks = sorted(datetime.fromisoformat(t).timestamp() for t in seen.ticks)
    assert {round(b - a, 3) for a, b in itertools.pairwise(ticks)} == {1.0}, \
        "ticks are one second apart, none missing"
    assert not seen.catch_ups


async def _gap(bus: EventBus, redis: Redis, queue: str, name: str, seconds: float) -> None:
    """Wait (on Redis's clock) until the last fired tick is ``seconds`` old."""
    async def old_enough() -> bool:
        last = await redis.hget(f"{queue}:schedules", name)
        return last is not None and bus.now_ms() - float(last) >= seconds * 1000
    await wait_until(old_enough, seconds + 5, interval=0.05, message=f"a {seconds} s gap")


@pytest.mark.parametrize("missed", ["catch_up", "skip"])
async def test_after_a_five_second_gap_catch_up_fires_once_and_skip_not_at_all(
    redis_url: str, queue_name: str, redis: Redis, missed: str
) -> None:
    schedule = Schedule("tick.gap", every=1, missed=missed)  # type: ignore[arg-type]
    seen = Seen()
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    async with _consumer(redis_url, queue_name, seen, schedule):
        await wait_until(lambda: len(seen.ticks) >= 2, 10, message="2 ticks")
    await _gap(bus, redis, queue_name, schedule.name, 5)
    before = len(seen.ticks)
    async with _consumer(redis_url, queue_name, seen, schedule, metrics=True) as consumer:
        await wait_until(lambda: len(seen.ticks) >= before + 3, 10, message="3 more ticks")
    handled = len(seen.ticks) - before
    fired = _ticks_counted(consumer, "fired")
    caught_up, skipped = _ticks_counted(consumer, "caught_up"), _ticks_counted(
        consumer, "skipped")
    await bus.close()
    if missed == "catch_up":
        assert len(seen.catch_ups) == 1, seen.catch_ups
        assert seen.catch_ups[0]["missed"] >= 4
        assert (caught_up, skipped) == (seen.catch_ups[0]["missed"], 0)
    else:
        assert seen.catch_ups == []
        assert caught_up == 0 and skipped >= 4
    # The only consumer running fired every tick handled (and maybe one still queued at stop).
    assert handled <= fired <= handled + 1
    assert max(seen.ids.values()) == 1


async def test_a_fired_event_is_a_normal_event_retried_then_dead_lettered(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    registry = HandlerRegistry()
    runs: list[int] = []

    async def fails(event: Event) -> None:
        runs.append(event.retries)
        raise RuntimeError("report failed")
    registry.register("report.flaky", fails, retry_policy={
        "max_retries": 1, "interval_start": 0.1, "interval_step": 0, "interval_max": 0.1})
    schedule = Schedule("report.flaky", every=3600, grace=3600)  # the current hour's tick
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    async with Consumer(redis_url, queue_name=queue_name, registry=registry,
                        schedules=[schedule]):
        await wait_until(lambda: _failed(bus), 10, message="the dead letter")
    assert runs == [0, 1]
    job = (await bus.get_failed_jobs())[0]
    assert job["name"] == "report.flaky" and job["reason"] == "handler_error"
    await bus.close()


async def _failed(bus: EventBus) -> bool:
    return bool(await bus.get_failed_jobs())


async def test_the_cli_lists_schedules_with_last_and_next_fire_times(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    schedule = Schedule("tick.listed", every=1)
    seen = Seen()
    async with _consumer(redis_url, queue_name, seen, schedule):
        await wait_until(lambda: len(seen.ticks) >= 1, 10, message="a tick")
    result = await anyio.run_process(
        [sys.executable, "-m", "earnorm.events", "schedules", "--redis-uri", redis_url, "--queue",
         queue_name, "--json"])
    (row,) = orjson.loads(result.stdout)
    assert row["name"] == "tick.listed" and row["schedule"] == "every 1 s"
    assert row["last_tick"] and row["next"] and row["last_tick_fired"] is True
