"""An event nobody subscribes to (the spec's ``@before_save("user.before_create")`` is the
common case) is acknowledged and counted, with one WARNING per event name, instead of filling
the failed store; a Celery task nobody runs is still kept there; ``unhandled_events=
"dead_letter"`` keeps events too."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from earnorm import ConfigError, Consumer, Event, EventBus, HandlerRegistry
from earnorm._config import EventConfig
from earnorm.events._wire.encode import encode_call
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


def _registry(seen: list[str]) -> HandlerRegistry:
    registry = HandlerRegistry()

    async def on_known(event: Event) -> None:
        seen.append(event.name)
    registry.register("known.event", on_known)
    return registry


async def test_an_event_nobody_subscribes_to_is_counted_and_warned_of_once_per_name(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    async with Consumer(bus=bus, registry=_registry(seen)) as consumer:
        await bus.publish_batch([Event(name="user.before_create")] * 3
                                + [Event(name="user.before_update"), Event(name="known.event")])
        await wait_until(lambda: consumer.unhandled == 4 and seen == ["known.event"], 10,
                         message="four skipped, one handled")
    stats = await bus.stats()
    assert stats["counters"]["unhandled"] == 4 and stats["counters"]["processed"] == 1
    assert (stats["failed"], stats["ready_total"], stats["inflight"]) == (0, 0, 0)
    assert await bus.get_failed_jobs() == []
    warned = [r.getMessage() for r in caplog.records if "no handler subscribes" in
              r.getMessage()]
    assert len(warned) == 2, warned
    assert "'user.before_create'" in warned[0] and "'user.before_update'" in warned[1]
    assert all(r.levelname == "WARNING" for r in caplog.records
               if "no handler subscribes" in r.getMessage())


async def test_a_celery_task_nobody_runs_is_kept_in_the_failed_store(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    async with Consumer(bus=bus, registry=_registry([])) as consumer:
        await redis.lpush(queue_name, encode_call("billing.charge", "task-1", [1], {},
                                                  queue_name))
        await wait_until(lambda: consumer.failed == 1, 10, message="the task dead-lettered")
    [job] = await bus.get_failed_jobs()
    assert (job["job_id"], job["reason"]) == ("task-1", "no_handler")
    assert (await bus.stats())["counters"]["unhandled"] == 0


@pytest.fixture
def bus_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return getattr(request, "param", {})


@pytest.mark.parametrize("bus_config", [{"unhandled_events": "dead_letter"}], indirect=True)
async def test_dead_letter_keeps_events_nobody_subscribes_to(bus: EventBus) -> None:
    async with Consumer(bus=bus, registry=_registry([])) as consumer:
        job_id = await bus.publish(Event(name="user.before_create"))
        await wait_until(lambda: consumer.failed == 1, 10, message="the event dead-lettered")
    [job] = await bus.get_failed_jobs()
    assert (job["job_id"], job["reason"]) == (job_id, "no_handler")
    assert consumer.unhandled == 0


def test_an_unknown_policy_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"unhandled_events must be 'skip' or 'dead_letter'"):
        EventConfig.from_dict({"unhandled_events": "drop"})
