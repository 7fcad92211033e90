"""A Celery client and Flower see an EarnORM handler's progress as they see a Celery task's
``update_state``: ``AsyncResult.state == "PROGRESS"`` with the report as ``.info``, then
SUCCESS and the value; a ``task-progress`` event that ``celery.events.state`` (what Flower
keeps) takes as the task's state."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from celery import Celery
from celery.events.state import State
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from earnorm.events._broker.celery_presence import _body
from tests.helpers import wait_until
from tests.interop.celery_app import make_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def bus_config(redis_url: str) -> dict[str, Any]:
    return {"result_backend": redis_url}


def client_app(redis_url: str, queue: str) -> Celery:
    app = make_app(redis_url, queue)
    app.conf.update(result_backend=redis_url, task_ignore_result=False)
    return app


async def test_a_celery_client_sees_progress_with_its_meta_then_success(
    redis_url: str, queue_name: str, bus: EventBus
) -> None:
    go_on = anyio.Event()
    registry = HandlerRegistry()

    async def export(event: Event) -> int:
        rows = int(event.data["rows"])
        await event.progress(40, rows, file="users.csv")
        await go_on.wait()
        await event.progress(rows, rows, file="users.csv")
        return rows

    registry.register("report.export", export)
    app = client_app(redis_url, queue_name)
    listener = Redis.from_url(redis_url).pubsub()
    await listener.psubscribe("*celeryev/task.*")
    flower = State()
    try:
        result = app.send_task("report.export", args=[{"rows": 100}])
        async with Consumer(bus=bus, registry=registry, celery_events=True):
            async def in_progress() -> bool:
                state: str = await anyio.to_thread.run_sync(lambda: result.state)
                return state == "PROGRESS"
            await wait_until(in_progress, 10, message="PROGRESS seen by the Celery client")
            info = await anyio.to_thread.run_sync(lambda: result.info)

            async def flower_sees(state: str) -> bool:
                message = await listener.get_message(timeout=0.1)
                if message and message["type"] == "pmessage":
                    # as Celery's EventReceiver hands events on: stamped on arrival
                    flower.event({**_body(message["data"]), "local_received": time.time()})
                task = flower.tasks.get(result.id)
                return task is not None and task.state == state
            await wait_until(lambda: flower_sees("PROGRESS"), 10, message="Flower's PROGRESS")
            progress_seen = flower.tasks[result.id].progress
            go_on.set()
            value = await anyio.to_thread.run_sync(lambda: result.get(timeout=10))
            await wait_until(lambda: flower_sees("SUCCESS"), 10, message="Flower's SUCCESS")
        assert info == {"done": 40, "total": 100, "file": "users.csv"}
        assert progress_seen == {"done": 40, "total": 100, "file": "users.csv"}
        assert value == 100
        assert await anyio.to_thread.run_sync(lambda: result.state) == "SUCCESS"
    finally:
        await listener.aclose()
        app.close()
