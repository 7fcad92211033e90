"""The failed-jobs API: paging in failure order, filters, bulk retry and purge."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from earnorm._errors import EventValidationError, JobNotFound
from earnorm.events._wire import decode as protocol
from earnorm.events._wire import encode
from tests.helpers import store_failed_job, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def bus_config() -> dict[str, Any]:
    return {"retry_policy": {"max_retries": 0}}


async def test_pages_follow_failure_order_even_with_ties(bus: EventBus) -> None:
    times = [1000.0, 2000.0, 2000.0, 2000.0, 3000.0, 4000.0, 4000.0]
    ids = [await store_failed_job(bus, "a.b", ms) for ms in times]
    # Within one failure time the index orders by id, as the zset does.
    expected = [i for _, i in sorted(zip(times, ids, strict=True))]
    seen: list[str] = []
    cursor = None
    while page := await bus.get_failed_jobs(limit=2, cursor=cursor):
        assert len(page) <= 2
        seen += [job["job_id"] for job in page]
        cursor = page[-1]["cursor"]
    assert seen == expected


async def test_retrying_while_paging_neither_skips_nor_repeats(bus: EventBus) -> None:
    ids = [await store_failed_job(bus, "a.b", 1000.0 + i) for i in range(9)]
    seen: list[str] = []
    cursor = None
    while page := await bus.get_failed_jobs(limit=3, cursor=cursor):
        for job in page:
            seen.append(job["job_id"])
            await bus.retry_job(job["job_id"])  # an offset cursor would now skip jobs
        cursor = page[-1]["cursor"]
    assert seen == ids
    assert await bus.redis.llen(bus.config.queue_name) == 9


async def test_event_name_filter_and_bulk_operations_return_counts(bus: EventBus) -> None:
    orders = [await store_failed_job(bus, "order.paid", 1000.0 + i) for i in range(3)]
    mails = [await store_failed_job(bus, "mail.sent", 2000.0 + i) for i in range(2)]
    listed = await bus.get_failed_jobs(event_name="mail.sent")
    assert [job["job_id"] for job in listed] == mails

    assert await bus.retry_failed(event_name="order.paid") == 3
    assert [job["job_id"] for job in await bus.get_failed_jobs()] == mails
    queued = await bus.redis.lrange(bus.config.queue_name, 0, -1)
    assert sorted(protocol.decode(raw).id for raw in queued) == sorted(orders)
    assert all(protocol.decode(raw).retries == 0 for raw in queued)

    assert await bus.purge_failed(event_name="order.paid") == 0
    assert await bus.purge_failed() == 2
    assert await bus.get_failed_jobs() == []
    assert await bus.retry_failed() == 0


async def test_purge_by_event_name_keeps_the_others(bus: EventBus) -> None:
    keep = await store_failed_job(bus, "keep.me", 1000.0)
    for i in range(3):
        await store_failed_job(bus, "drop.me", 2000.0 + i)
    assert await bus.purge_failed(event_name="drop.me") == 3
    assert [job["job_id"] for job in await bus.get_failed_jobs()] == [keep]


async def test_undecodable_jobs_stay_when_retrying_all(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    registry = HandlerRegistry()

    async def fails(event: Event) -> None:
        raise ValueError("no")

    registry.register("a.b", fails)
    async with Consumer(bus=bus, registry=registry):
        await redis.lpush(queue_name, b"\xff garbage")
        job_id = await bus.publish(Event(name="a.b"))
        await wait_until(lambda: _failed_count(redis, queue_name, 2), 10, message="2 failed")
    [garbage] = [j["job_id"] for j in await bus.get_failed_jobs() if j["job_id"] != job_id]
    with pytest.raises(EventValidationError, match="cannot be retried"):
        await bus.retry_job(garbage)
    assert await bus.retry_failed() == 1
    assert [j["job_id"] for j in await bus.get_failed_jobs()] == [garbage]
    with pytest.raises(JobNotFound, match="no failed job with id 'nope'"):
        await bus.get_failed_job("nope")


async def _failed_count(redis: Redis, queue_name: str, n: int) -> bool:
    return await redis.hlen(f"{queue_name}:failed") == n


async def test_a_malformed_cursor_is_refused_clearly(bus: EventBus) -> None:
    with pytest.raises(EventValidationError, match="invalid cursor 'abc'"):
        await bus.get_failed_jobs(cursor="abc")


async def test_failed_record_has_everything_an_operator_needs(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    registry = HandlerRegistry()

    async def fails(event: Event) -> None:
        raise LookupError("no such customer")

    registry.register("order.paid", fails, name="billing.charge")
    async with Consumer(bus=bus, registry=registry):
        job_id = await bus.publish(Event(name="order.paid", data={"order": 7},
                                         metadata={"source": "api"}))
        await wait_until(lambda: redis.hexists(f"{queue_name}:failed", job_id), 10)
    job = await bus.get_failed_job(job_id)
    assert job["job_id"] == job_id
    assert (job["name"], job["data"], job["metadata"]) == ("order.paid", {"order": 7},
                                                           {"source": "api"})
    assert protocol.decode(job["envelope"]).id == job_id
    assert (job["error_type"], job["error"]) == ("LookupError", "no such customer")
    assert "LookupError: no such customer" in (job["traceback"] or "")
    assert job["handlers"] == ["billing.charge"]
    assert job["attempts"] == 1
    assert job["reason"] == "handler_error"
    assert job["first_failed_at"] <= job["last_failed_at"]
    assert (await bus.stats())["counters"]["failed"] == 1


async def test_retrying_an_expired_job_runs_it_instead_of_expiring_it_again(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    handled: list[str] = []
    registry = HandlerRegistry()

    async def handle(event: Event) -> None:
        handled.append(event.id)

    registry.register("a.b", handle)
    event = Event(name="a.b")
    raw = orjson.loads(encode.encode_event(event, queue_name))
    raw["headers"]["expires"] = "2000-01-01T00:00:00+00:00"
    async with Consumer(bus=bus, registry=registry):
        await redis.lpush(queue_name, orjson.dumps(raw))
        await wait_until(lambda: redis.hexists(f"{queue_name}:failed", event.id), 10)
        assert (await bus.get_failed_job(event.id))["reason"] == "expired"
        await bus.retry_job(event.id)
        await wait_until(lambda: handled == [event.id], 10, message="the retried event")
    assert await bus.get_failed_jobs() == []
