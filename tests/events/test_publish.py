"""What ``publish`` writes to Redis, and what it refuses to write."""

from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal
from typing import cast

import orjson
import pytest
from redis.asyncio import Redis

from earnorm import Event, EventBus
from earnorm._errors import EventValidationError, SerializationError
from tests.helpers import loads

pytestmark = pytest.mark.anyio


async def test_publish_lpushes_a_complete_celery_message(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    event = Event(name="user.created", data={"user_id": 7})
    job_id = await bus.publish(event)
    assert job_id == event.id
    [raw] = await redis.lrange(queue_name, 0, -1)
    envelope = orjson.loads(raw)
    assert envelope["headers"]["task"] == "user.created"
    assert envelope["headers"]["id"] == event.id
    assert envelope["content-type"] == "application/json"
    props = envelope["properties"]
    assert props["delivery_info"] == {"exchange": "", "routing_key": queue_name}
    assert props["delivery_tag"] and props["body_encoding"] == "base64"
    body = orjson.loads(base64.b64decode(envelope["body"]))
    assert body == [[{"user_id": 7}], {}, {
        "callbacks": None, "errbacks": None, "chain": None, "chord": None}]


async def test_publish_is_fifo_for_the_consuming_end(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    ids = [await bus.publish(Event(name="a.b", data={"i": i})) for i in range(3)]
    popped = [loads(await redis.rpop(queue_name))["headers"]["id"] for _ in ids]
    assert popped == ids


async def test_delay_goes_to_the_delayed_set_with_an_eta(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    before = bus.now_ms()
    await bus.publish(Event(name="a.b"), delay=dt.timedelta(seconds=60))
    assert await redis.llen(queue_name) == 0
    [(member, score)] = cast(list[tuple[bytes, float]],
                             await redis.zrange(f"{queue_name}:delayed", 0, -1, withscores=True))
    assert before + 60_000 <= score <= bus.now_ms() + 60_000
    envelope = orjson.loads(member.partition(b":")[2])
    eta = dt.datetime.fromisoformat(envelope["headers"]["eta"])
    assert abs(eta.timestamp() * 1000 - score) < 1


async def test_priority_goes_to_celery_sub_list(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    await bus.publish(Event(name="a.b"), priority=5)
    await bus.publish(Event(name="a.b"), priority=9)
    assert await redis.llen(f"{queue_name}\x06\x163") == 1
    assert await redis.llen(f"{queue_name}\x06\x169") == 1
    assert await redis.llen(queue_name) == 0


async def test_publish_batch_returns_ids_in_order(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    events = [Event(name="a.b", data={"i": i}) for i in range(50)]
    ids = await bus.publish_batch(events)
    assert ids == [e.id for e in events]
    assert await redis.llen(queue_name) == 50


@pytest.mark.parametrize("name", ["User.created", "user", "user..created", "user created", ""])
def test_invalid_event_names_are_refused(name: str) -> None:
    with pytest.raises(EventValidationError, match="event name"):
        Event(name=name)


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"user": {"avatar": object()}}, "data.user.avatar"),
        ({"items": [1, {2, 3}]}, r"data.items\[1\]"),
        ({"ratio": float("nan")}, "data.ratio"),
        ({"big": 2**70}, "data.big"),
        ({"x": {"__type__": "a", "__value__": 1}}, "data.x"),
        ({"m": {1: "int key"}}, "data.m"),
    ],
)
async def test_unserializable_data_names_the_field(
    bus: EventBus, redis: Redis, queue_name: str, data: dict[str, object], path: str
) -> None:
    with pytest.raises(SerializationError, match=path):
        await bus.publish(Event(name="a.b", data=data))
    assert await redis.llen(queue_name) == 0


async def test_message_over_size_limit_is_refused(redis_url: str, queue_name: str) -> None:
    bus = await EventBus.connect(redis_url, queue_name=queue_name, max_message_bytes=2048)
    with pytest.raises(EventValidationError, match="max_message_bytes"):
        await bus.publish(Event(name="a.b", data={"blob": "x" * 4096}))
    await bus.close()


async def test_special_types_use_kombu_tags(bus: EventBus, redis: Redis, queue_name: str) -> None:
    await bus.publish(Event(name="a.b", data={"d": Decimal("1.10")}))
    envelope = loads(await redis.rpop(queue_name))
    body = orjson.loads(base64.b64decode(envelope["body"]))
    assert body[0][0] == {"d": {"__type__": "decimal", "__value__": "1.10"}}
