"""With Celery task events on, a message that is not run says why, as a Celery worker's
events do: ``task-revoked`` (expired) for an expired task, ``task-rejected`` for one that
could not be decoded, so ``celery events`` and Flower see what happened to it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from earnorm.events._broker.celery_presence import _body
from earnorm.events._wire.encode import encode_call
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


async def test_expired_and_undecodable_tasks_send_revoked_and_rejected_events(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    seen: dict[str, dict[str, Any]] = {}
    listener = Redis.from_url(bus.url).pubsub()
    await listener.psubscribe("*celeryev/task.re*")
    registry = HandlerRegistry()

    async def charge(event: Event) -> None:
        raise AssertionError("an expired task must not run")
    registry.register("billing.charge", charge)
    async with Consumer(bus=bus, registry=registry, celery_events=True):
        late = orjson.loads(encode_call("billing.charge", "late-task", [], {}, queue_name))
        late["headers"]["expires"] = "2020-01-01T00:00:00+00:00"
        await redis.lpush(queue_name, orjson.dumps(late))
        await redis.lpush(queue_name, orjson.dumps({
            "body": "not base64!", "content-type": "application/json",
            "headers": {"task": "billing.charge", "id": "garbled-task"},
            "properties": {"body_encoding": "base64", "delivery_tag": "t"}}))

        async def collect() -> bool:
            message = await listener.get_message(timeout=0.1)
            if message and message["type"] == "pmessage":
                body = _body(message["data"])
                seen[body["uuid"]] = body
            return {"late-task", "garbled-task"} <= set(seen)
        await wait_until(collect, 10, message=f"both task events; seen {seen}")
    await listener.aclose()
    assert seen["late-task"]["type"] == "task-revoked" and seen["late-task"]["expired"] is True
    assert seen["garbled-task"]["type"] == "task-rejected"
    assert seen["garbled-task"]["requeue"] is False
