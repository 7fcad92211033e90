"""``event.progress()``: a running handler's report is in Redis while it runs (our key for the
dashboard, Celery's result meta for a client) and replaced by the outcome; reports closer than
the interval are dropped but the one reaching the total is always written; misuse raises."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, EarnORMError, Event, EventBus, EventValidationError, HandlerRegistry
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def bus_config(redis_url: str) -> dict[str, Any]:
    return {"result_backend": redis_url, "retry_policy": {"max_retries": 0}}


async def meta(redis: Redis, job: str) -> dict[str, Any] | None:
    raw = await redis.get(f"celery-task-meta-{job}")
    return None if raw is None else dict(orjson.loads(raw))


async def test_a_report_is_read_while_the_handler_runs_then_the_outcome_replaces_it(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    go_on = anyio.Event()
    registry = HandlerRegistry()

    async def resize(event: Event) -> str:
        await event.progress(2, 5, stage="thumbnails")
        await go_on.wait()
        return "resized"

    registry.register("image.resize", resize)
    async with Consumer(bus=bus, registry=registry):
        job = await bus.publish(Event(name="image.resize"))

        async def reported() -> bool:  # both writes of the report done
            return await bus.broker.progress.read(job) is not None and (
                await meta(redis, job) or {}).get("status") == "PROGRESS"
        await wait_until(reported, 10, message="the report")
        report = await bus.broker.progress.read(job)
        running_meta = await meta(redis, job)
        go_on.set()

        async def succeeded() -> bool:
            return (await meta(redis, job) or {}).get("status") == "SUCCESS"
        await wait_until(succeeded, 10, message="the outcome")

        async def removed() -> bool:
            return await redis.exists(f"{queue_name}:progress:{job}") == 0
        await wait_until(removed, 5, message="the report removed")
    assert report is not None
    assert report["state"] == "PROGRESS"
    assert report["info"] == {"done": 2, "total": 5, "stage": "thumbnails"}
    assert report["consumer"].startswith("c-")
    assert running_meta is not None
    assert (running_meta["status"], running_meta["result"], running_meta["date_done"]) == (
        "PROGRESS", {"done": 2, "total": 5, "stage": "thumbnails"}, None)
    assert (await meta(redis, job) or {})["result"] == "resized"


async def test_reports_closer_than_the_interval_are_dropped_and_the_last_is_written(
    bus: EventBus, redis: Redis
) -> None:
    """1,000 reports in a tight loop write a handful of times (one per 0.1 s), the one that
    reaches the total among them: counted on the result channel, which every write publishes to."""
    registry = HandlerRegistry()
    took: list[float] = []

    async def crunch(event: Event) -> None:
        began = time.monotonic()
        for n in range(1, 1001):
            await event.progress(n, 1000, state="CRUNCHING")
            if n % 100 == 0:
                await anyio.sleep(0.02)
        took.append(time.monotonic() - began)

    registry.register("data.crunch", crunch)
    job = "crunch-job"
    listener = redis.pubsub()
    await listener.subscribe(f"celery-task-meta-{job}")
    seen: list[dict[str, Any]] = []

    async def collect() -> bool:
        message = await listener.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            seen.append(orjson.loads(message["data"]))
        return bool(seen) and seen[-1]["status"] == "SUCCESS"

    async with Consumer(bus=bus, registry=registry):
        await bus.publish(Event(name="data.crunch", id=job))
        await wait_until(collect, 10, message="the reports and the outcome")
    await listener.aclose()
    reports = [m for m in seen if m["status"] == "CRUNCHING"]
    assert 1 <= len(reports) <= took[0] / 0.1 + 2, f"{len(reports)} writes in {took[0]:.2f} s"
    assert reports[-1]["result"] == {"done": 1000, "total": 1000}
    assert reports[0]["result"] == {"done": 1, "total": 1000}


async def test_misuse_raises_with_the_reason_and_the_handler_can_carry_on(bus: EventBus) -> None:
    registry = HandlerRegistry()
    errors: list[str] = []
    late: list[Any] = []
    done = anyio.Event()

    async def careless(event: Event) -> None:
        calls: list[Callable[[], Awaitable[None]]] = [
            lambda: event.progress(1, 2, state="SUCCESS"),
            lambda: event.progress(-1, 2),
            lambda: event.progress(True, 2),
            lambda: event.progress(1, 2, state="progress"),
            lambda: event.progress(1, 2, when=object())]
        for call in calls:
            try:
                await call()
            except EventValidationError as exc:
                errors.append(str(exc))

        async def after_return() -> None:
            await anyio.sleep(0.05)
            try:
                await event.progress(2, 2)
            except EarnORMError as exc:
                late.append(exc)
            done.set()
        tg.start_soon(after_return)

    registry.register("careless.report", careless)
    async with anyio.create_task_group() as tg, Consumer(bus=bus, registry=registry) as c:
        await bus.publish(Event(name="careless.report"))
        with anyio.fail_after(10):
            await done.wait()
        await wait_until(lambda: c.processed == 1, 5, message="the handler succeeded")
    with pytest.raises(EarnORMError, match="outside a consumer"):
        await Event(name="careless.report").progress(1, 2)
    assert len(errors) == 5, errors
    assert "Celery's own states" in errors[0]
    assert "done must be a number" in errors[1] and "done must be a number" in errors[2]
    assert "upper-case" in errors[3]
    assert "progress" in errors[4] and "when" in errors[4]
    assert len(late) == 1 and "not running here" in str(late[0])
