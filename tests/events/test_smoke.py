from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
async def test_published_event_reaches_handler_equal(
    redis_url: str, queue_name: str, redis: object, serializer: str
) -> None:
    received: list[Event] = []
    registry = HandlerRegistry()

    async def on_created(event: Event) -> None:
        received.append(event)

    registry.register("user.created", on_created)
    bus = await EventBus.connect(redis_url, {"queue_name": queue_name, "serializer": serializer})
    sent = Event(
        name="user.created",
        data={
            "email": "zoë@example.com",
            "at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            "amount": Decimal("12.50"),
            "ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
            "blob": b"\x00\xff",
            "day": dt.date(2026, 1, 2),
        },
        metadata={"source": "signup"},
    )
    async with Consumer(bus=bus, registry=registry, concurrency=4):
        await bus.publish(sent)
        await wait_until(lambda: received, 10, message="handler call")
    await bus.close()
    assert received == [sent]
    assert received[0].data["amount"] == Decimal("12.50")
    assert received[0].timestamp == sent.timestamp
