"""Celery publishes (``send_task`` / ``apply_async`` from a real Celery app) -> our consumer."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from celery import Celery, group
from redis.asyncio import Redis

from earnorm import Consumer, Event, HandlerRegistry
from tests.helpers import wait_until
from tests.interop.celery_app import EVENT_TASKS

pytestmark = pytest.mark.anyio

SEP = "\x06\x16"


@dataclass
class Recorder:
    registry: HandlerRegistry = field(default_factory=HandlerRegistry)
    events: list[tuple[Event, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in EVENT_TASKS:
            self.registry.register(name, self.record, name=f"record:{name}")

    async def record(self, event: Event) -> None:
        self.events.append((event, time.time()))

    def ids(self) -> list[str]:
        return [e.id for e, _ in self.events]

    def one(self) -> tuple[Event, float]:
        assert len(self.events) == 1, self.events
        return self.events[0]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def consumer(
    redis_url: str, queue_name: str, recorder: Recorder, redis: Redis
) -> AsyncIterator[Consumer]:
    async with Consumer(
        redis_url, queue_name=queue_name, registry=recorder.registry, concurrency=4
    ) as running:
        yield running


def publish(producer: Celery, method: str, name: str, **options: Any) -> str:
    if method == "send_task":
        return str(producer.send_task(name, **options).id)
    return str(producer.tasks[name].apply_async(**options).id)


SHAPES: dict[str, tuple[dict[str, Any], Any]] = {
    "args_only": ({"args": [7, "bob@example.com"]}, {"args": [7, "bob@example.com"],
                                                      "kwargs": {}}),
    "one_dict_arg": ({"args": [{"user_id": 7}]}, {"user_id": 7}),
    "kwargs_only": ({"kwargs": {"plan": "pro", "tags": ["a"]}}, {"plan": "pro", "tags": ["a"]}),
    "both": ({"args": [7], "kwargs": {"plan": "pro"}}, {"args": [7], "kwargs": {"plan": "pro"}}),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("method", ["send_task", "apply_async"])
async def test_celery_call_is_handled_as_an_event(
    producer: Celery, consumer: Consumer, recorder: Recorder, method: str, shape: str
) -> None:
    options, data = SHAPES[shape]
    task_id = publish(producer, method, "user.created", **options)
    await wait_until(lambda: recorder.events, 10, message="the event")
    event, _ = recorder.one()
    assert (event.name, event.id, event.data) == ("user.created", task_id, data)
    assert event.args == tuple(options.get("args", ()))
    assert event.kwargs == options.get("kwargs", {})


@pytest.mark.parametrize("how", ["countdown", "eta"])
async def test_celery_eta_waits_in_our_delayed_set_and_runs_on_time(
    producer: Celery, consumer: Consumer, recorder: Recorder, redis: Redis, queue_name: str,
    how: str,
) -> None:
    due = datetime.now(UTC) + timedelta(seconds=2)
    timing = {"countdown": 2} if how == "countdown" else {"eta": due}
    task_id = publish(producer, "apply_async", "user.created", args=[{"x": 1}], **timing)
    await wait_until(lambda: redis.zcard(f"{queue_name}:delayed"), 5, message="deferral")
    # Held in Redis, not in the consumer: nothing ready, nothing in flight, not yet run.
    assert await redis.llen(queue_name) == 0
    assert await redis.hlen(f"{queue_name}:inflight:{consumer.consumer_id}") == 0
    assert recorder.events == []
    await wait_until(lambda: recorder.events, 10, message="the delayed event")
    event, ran_at = recorder.one()
    assert event.id == task_id
    assert ran_at >= due.timestamp() - 0.1  # countdown's eta is stamped a moment before `due`
    assert await redis.zcard(f"{queue_name}:delayed") == 0


async def test_expired_celery_message_is_not_run_but_counted_and_recorded(
    producer: Celery, consumer: Consumer, recorder: Recorder
) -> None:
    expires = datetime.now(UTC) - timedelta(seconds=60)
    task_id = publish(producer, "send_task", "user.created", args=[{"x": 1}], expires=expires)
    # The counter goes up just before the record is written: wait for the record.
    await wait_until(lambda: consumer.bus.broker.failed.get(task_id), 10,
                     message="the expired message's record")
    assert consumer.failed == 1
    assert recorder.events == []
    job = await consumer.bus.get_failed_job(task_id)
    assert job["reason"] == "expired"
    assert "expired" in job["detail"]
    assert job["name"] == "user.created"


async def test_priorities_on_celery_sub_queues_lower_number_first(
    redis_url: str, producer: Celery, recorder: Recorder, redis: Redis, queue_name: str,
) -> None:
    labels = [("P9", 9), ("P5", 5), ("P3", 3), ("P0", 0), ("P9b", 9), ("P0b", 0)]
    for label, priority in labels:
        producer.send_task("order.placed", args=[{"label": label}], priority=priority)
    assert await redis.llen(queue_name) == 2
    assert await redis.llen(f"{queue_name}{SEP}3") == 2
    assert await redis.llen(f"{queue_name}{SEP}9") == 2
    async with Consumer(redis_url, queue_name=queue_name, registry=recorder.registry,
                        concurrency=1):
        await wait_until(lambda: len(recorder.events) == 6, 10,
                         message=f"six events {[e.data for e, _ in recorder.events]}")
    order = [e.data["label"] for e, _ in recorder.events]
    assert order == ["P0", "P0b", "P5", "P3", "P9", "P9b"]


SPECIAL: dict[str, Any] = {
    "text": "Zoë ✓ 日本",
    "at": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    "day": date(2024, 1, 2),
    "amount": Decimal("1.10"),
    "ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "blob": b"raw-bytes",
    "binary": b"\x00\xff",
    "nested": [{"a": [1, None, 2.5]}],
}
PLAIN: dict[str, Any] = {"text": "Zoë ✓ 日本", "blob": b"\x00\xff", "nested": [{"a": [1, None]}]}


@pytest.mark.parametrize(("serializer", "compression", "data"), [
    ("json", None, SPECIAL),
    ("json", "zlib", SPECIAL),
    ("msgpack", None, PLAIN),  # Celery's msgpack cannot carry datetime/Decimal/UUID at all
    ("msgpack", "zlib", PLAIN),
])
async def test_celery_serializers_and_compression_give_exact_data(
    producer: Celery, consumer: Consumer, recorder: Recorder, serializer: str,
    compression: str | None, data: dict[str, Any],
) -> None:
    publish(producer, "send_task", "user.created", args=[data], serializer=serializer,
            compression=compression)
    await wait_until(lambda: recorder.events, 10, message="the event")
    event, _ = recorder.one()
    assert repr(event.data) == repr(data)


async def test_group_members_are_each_handled_with_their_group_in_metadata(
    producer: Celery, consumer: Consumer, recorder: Recorder
) -> None:
    task = producer.tasks["user.created"]
    result = group(task.s({"n": 1}), task.s({"n": 2}), task.s({"n": 3})).apply_async()
    await wait_until(lambda: len(recorder.events) == 3, 10, message="three group members")
    members = sorted(
        (e.metadata["celery"]["group_index"], e.data["n"], e.metadata["celery"]["group"])
        for e, _ in recorder.events
    )
    assert members == [(0, 1, result.id), (1, 2, result.id), (2, 3, result.id)]


async def test_a_link_callback_runs_with_the_result_and_the_errback_does_not(
    producer: Celery, consumer: Consumer, recorder: Recorder, redis: Redis, queue_name: str,
) -> None:
    """What a Celery worker does on success: publish each ``link`` with the task's return
    value (here None) prepended; ``link_error`` only runs on a permanent failure."""
    link = producer.signature("user.updated", args=["linked"])
    error = producer.signature("order.placed", args=["failed"])
    first = publish(producer, "apply_async", "user.created", args=[{"x": 1}], link=link,
                    link_error=error)
    await wait_until(lambda: len(recorder.events) == 2, 10, message="the event and its link")
    (event, _), (linked, _) = recorder.events
    assert event.id == first
    celery = event.metadata["celery"]  # still visible to the handler
    assert [(c["task"], c["args"]) for c in celery["callbacks"]] == [("user.updated", ["linked"])]
    assert linked.name == "user.updated" and linked.args == (None, "linked")

    async def acked() -> bool:
        return await redis.hlen(f"{queue_name}:inflight:{consumer.consumer_id}") == 0

    await wait_until(acked, 5, message="ack")
    assert await redis.llen(queue_name) == 0  # the errback was never published
    assert consumer.failed == 0 and consumer.processed == 2


async def test_message_as_celery_self_retry_publishes_it_runs_with_its_retry_count(
    producer: Celery, consumer: Consumer, recorder: Recorder, redis: Redis, queue_name: str,
) -> None:
    """wire.md 10: a retry is the same id and body with retries + 1, a countdown eta and
    parent_id = id. Here apply_async is given those options; the real ``self.retry()`` from a
    running worker is in test_bus_to_celery.py."""
    task_id = str(uuid.uuid4())
    task = producer.tasks["user.created"]
    task.apply_async(args=[{"x": 1}], task_id=task_id, retries=1, countdown=1,
                     parent_id=task_id, root_id=task_id)
    await wait_until(lambda: recorder.events, 10, message="the retried event")
    event, _ = recorder.one()
    assert (event.id, event.retries, event.data) == (task_id, 1, {"x": 1})
