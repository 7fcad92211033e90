"""Nothing is dropped: bad, unknown and failing messages land in the failed store."""

from __future__ import annotations

import itertools
import time
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from earnorm._errors import JobNotFound
from tests.helpers import loads, wait_until

pytestmark = pytest.mark.anyio

FAST_RETRY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.1, "interval_max": 1}


@pytest.fixture
def bus_config() -> dict[str, Any]:
    # Events nobody subscribes to are kept too (the default skips them: tests/events/
    # test_unhandled.py).
    return {"retry_policy": FAST_RETRY, "unhandled_events": "dead_letter"}


async def test_unknown_event_and_garbage_are_kept_and_consumer_goes_on(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    seen: list[str] = []
    registry = HandlerRegistry()

    async def on_known(event: Event) -> None:
        seen.append(event.id)

    registry.register("known.event", on_known)
    async with Consumer(bus=bus, registry=registry):
        unknown = await bus.publish(Event(name="unknown.event"))
        await redis.lpush(queue_name, b"\xff not json")
        known = await bus.publish(Event(name="known.event"))
        await wait_until(lambda: seen == [known], 10, message="good event after bad ones")
        await wait_until(lambda: redis.hlen(f"{queue_name}:failed"), 10)
        await wait_until(
            lambda: _count(bus), 10, message="both bad messages in the failed store"
        )
    jobs = await bus.get_failed_jobs()
    reasons = {job["reason"] for job in jobs}
    assert reasons == {"no_handler", "undecodable"}
    by_reason = {job["reason"]: job for job in jobs}
    assert by_reason["no_handler"]["job_id"] == unknown
    assert "unknown.event" in by_reason["no_handler"]["detail"]
    assert "not JSON" in by_reason["undecodable"]["detail"]
    assert by_reason["undecodable"]["envelope_base64"]


async def _count(bus: EventBus) -> bool:
    return len(await bus.get_failed_jobs()) == 2


async def test_failing_handler_retries_on_schedule_then_dead_letters(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    attempts: list[float] = []
    registry = HandlerRegistry()

    async def always_fails(event: Event) -> None:
        attempts.append(time.monotonic())
        raise ValueError(f"boom {len(attempts)}")

    registry.register("order.paid", always_fails)
    async with Consumer(bus=bus, registry=registry):
        job_id = await bus.publish(Event(name="order.paid", data={"order": 1}))
        await wait_until(lambda: redis.hexists(f"{queue_name}:failed", job_id), 10)
    assert len(attempts) == 3  # the first try and max_retries=2 retries
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert 0.1 <= gaps[0] < 0.5 and 0.2 <= gaps[1] < 0.6
    job = await bus.get_failed_job(job_id)
    assert job["reason"] == "handler_error"
    assert job["attempts"] == 3
    assert job["error_type"] == "ValueError"
    assert job["errors"][0]["error"] == "boom 3"
    assert "Traceback" in job["errors"][0]["traceback"]
    assert job["data"] == {"order": 1}
    assert await redis.llen(queue_name) == 0
    assert await redis.zcard(f"{queue_name}:delayed") == 0


async def test_retry_job_runs_it_again_once_and_remove_job_deletes(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    fail = True
    handled: list[str] = []
    registry = HandlerRegistry()

    async def flaky(event: Event) -> None:
        if fail:
            raise RuntimeError("down")
        handled.append(event.id)

    registry.register("mail.send", flaky, retry_policy={"max_retries": 0})
    async with Consumer(bus=bus, registry=registry):
        first = await bus.publish(Event(name="mail.send"))
        second = await bus.publish(Event(name="mail.send"))
        await wait_until(lambda: redis.hlen(f"{queue_name}:failed"), 10)
        await wait_until(
            lambda: _failed_ids_are(bus, {first, second}), 10, message="both failed"
        )
        fail = False
        await bus.retry_job(first)
        await wait_until(lambda: handled == [first], 10, message="retried job handled")
        await anyio.lowlevel.checkpoint()
    await bus.remove_job(second)
    assert await bus.get_failed_jobs() == []
    with pytest.raises(JobNotFound, match=second):
        await bus.remove_job(second)
    with pytest.raises(JobNotFound):
        await bus.retry_job("no-such-job")


async def _failed_ids_are(bus: EventBus, ids: set[str]) -> bool:
    return {job["job_id"] for job in await bus.get_failed_jobs()} == ids


async def test_failed_record_is_json_with_the_raw_envelope(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    async with Consumer(bus=bus, registry=HandlerRegistry()):
        job_id = await bus.publish(Event(name="nobody.listens", data={"k": "v"}))
        await wait_until(lambda: redis.hexists(f"{queue_name}:failed", job_id), 10)
    record = loads(await redis.hget(f"{queue_name}:failed", job_id))
    assert orjson.loads(record["envelope"])["headers"]["id"] == job_id


async def test_an_undecodable_body_is_filed_under_the_id_and_task_its_headers_name(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    """The headers were read, the body was not: the record carries the task's own id and
    name (a Celery client can look for it), not an ``undecodable-<uuid>`` without a name."""
    envelope = {
        "body": "not base64 at all!", "content-type": "application/json",
        "headers": {"task": "billing.charge", "id": "task-42"},
        "properties": {"body_encoding": "base64", "delivery_tag": "t"},
    }
    async with Consumer(bus=bus, registry=HandlerRegistry()) as consumer:
        await redis.lpush(queue_name, orjson.dumps(envelope))
        await wait_until(lambda: consumer.failed == 1, 10, message="dead-lettered")
    [job] = await bus.get_failed_jobs()
    assert (job["job_id"], job["name"], job["reason"]) == ("task-42", "billing.charge",
                                                           "undecodable")
    assert "base64" in job["detail"]
