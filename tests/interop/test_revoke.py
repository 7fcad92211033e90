"""Revoke, against real Celery clients: a revoked task that is ready, delayed or waiting for a
retry never runs, a running one is cancelled with terminate=True, the ids are shared by every
consumer of the queue and survive a restart, and the client's ``AsyncResult`` sees REVOKED."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import orjson
import pytest
from celery import Celery
from celery.exceptions import TaskRevokedError

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from tests.helpers import wait_until
from tests.interop.celery_app import make_app, received_key
from tests.interop.harness import celery_worker

pytestmark = pytest.mark.anyio

FAST = {"max_retries": 2, "interval_start": 0.4, "interval_step": 0, "interval_max": 0.4}


@pytest.fixture
def bus_config(redis_url: str) -> dict[str, Any]:
    return {"retry_policy": FAST, "result_backend": redis_url}


def client(redis_url: str, queue: str) -> Celery:
    app = make_app(redis_url, queue)
    app.conf.update(result_backend=redis_url, task_ignore_result=False)
    app.task(name="slow.task", shared=False)(_never_here)
    return app


def _never_here(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("producer-side task must not run")


def recorder(calls: Counter[str], *, block: anyio.Event | None = None,
             fail_first: bool = False) -> HandlerRegistry:
    registry = HandlerRegistry()

    async def handle(event: Event) -> str:
        calls[event.id] += 1
        if fail_first and calls[event.id] == 1:
            raise RuntimeError("fails once: its retry waits in the delayed set")
        if block is not None:
            await block.wait()
        return "done"
    registry.register("slow.task", handle)
    return registry


async def revoked_count(bus: EventBus) -> int:
    return int((await bus.stats())["counters"].get("revoked", 0))


async def revoked_is(bus: EventBus, count: int) -> bool:
    return await revoked_count(bus) == count


async def get_raises_revoked(app: Celery, task_id: str) -> None:
    with pytest.raises(TaskRevokedError):
        await anyio.to_thread.run_sync(lambda: app.AsyncResult(task_id).get(timeout=5))


async def test_a_celery_client_revokes_a_delayed_task_that_then_never_runs(
    redis_url: str, queue_name: str, bus: EventBus,
) -> None:
    calls: Counter[str] = Counter()
    app = client(redis_url, queue_name)
    async with Consumer(bus=bus, registry=recorder(calls)):
        result = app.send_task("slow.task", countdown=0.5)
        await anyio.to_thread.run_sync(lambda: app.control.revoke(result.id))
        other = app.send_task("slow.task")  # the consumer keeps running the rest
        await wait_until(lambda: calls[other.id] == 1, 10, message="the other task")
        await wait_until(lambda: revoked_count(bus), 10, message="the revoked one acked")
        await get_raises_revoked(app, result.id)
    app.close()
    assert calls[result.id] == 0
    assert await bus.get_failed_jobs() == []  # revoked on purpose: not a failure


async def test_revoked_before_any_consumer_runs_holds_across_a_restart_and_two_consumers(
    redis_url: str, queue_name: str, bus: EventBus,
) -> None:
    calls: Counter[str] = Counter()
    first = Consumer(bus=bus, registry=recorder(calls))
    async with first:  # a consumer that knew nothing of the revoke, stopped
        pass
    app = client(redis_url, queue_name)
    revoked = [app.send_task("slow.task").id for _ in range(3)]
    kept = app.send_task("slow.task").id
    await bus.revoke(revoked)  # no consumer runs: only Redis holds it now
    second_bus = await EventBus.connect(redis_url, {"queue_name": queue_name})
    try:
        async with (Consumer(bus=bus, registry=recorder(calls)),
                    Consumer(bus=second_bus, registry=recorder(calls))):
            await wait_until(lambda: calls[kept] == 1, 10, message="the kept task")
            await wait_until(lambda: revoked_is(bus, 3), 10, message="three revoked")
        for task_id in revoked:
            await get_raises_revoked(app, task_id)
    finally:
        await second_bus.close()
        app.close()
    assert all(calls[task_id] == 0 for task_id in revoked)


async def test_a_task_waiting_for_its_retry_is_revoked_by_our_api(
    redis_url: str, queue_name: str, bus: EventBus,
) -> None:
    calls: Counter[str] = Counter()
    app = client(redis_url, queue_name)
    async with Consumer(bus=bus, registry=recorder(calls, fail_first=True)):
        task_id = app.send_task("slow.task").id
        await wait_until(lambda: calls[task_id] == 1, 10, message="the first attempt")
        await wait_until(lambda: bus.redis.zcard(f"{queue_name}:delayed"), 5,
                         message="its retry scheduled")
        await bus.revoke(task_id)
        await wait_until(lambda: revoked_count(bus), 10, message="the retry revoked")
        await get_raises_revoked(app, task_id)
    app.close()
    assert calls[task_id] == 1  # never run again


async def test_terminate_cancels_the_running_handler_and_it_is_not_retried(
    redis_url: str, queue_name: str, bus: EventBus,
) -> None:
    calls: Counter[str] = Counter()
    never = anyio.Event()
    app = client(redis_url, queue_name)
    async with Consumer(bus=bus, registry=recorder(calls, block=never)) as consumer:
        result = app.send_task("slow.task")
        await wait_until(lambda: calls[result.id] == 1, 10, message="the task running")
        await anyio.to_thread.run_sync(lambda: result.revoke(terminate=True))
        await wait_until(lambda: revoked_count(bus), 10, message="terminated")
        await get_raises_revoked(app, result.id)
        assert consumer.retried == 0
    app.close()
    assert calls[result.id] == 1
    stats = await bus.stats()
    assert stats["delayed"] == 0 and stats["failed"] == 0


async def test_an_event_revoked_while_it_waits_for_its_batch_is_not_run(
    redis_url: str, queue_name: str, bus: EventBus,
) -> None:
    batches: list[list[str]] = []
    registry = HandlerRegistry()

    async def handle(events: list[Event]) -> None:
        batches.append([e.id for e in events])

    registry.register("slow.task", handle, batch_size=10, batch_timeout=1.5)
    app = client(redis_url, queue_name)
    async with Consumer(bus=bus, registry=registry) as consumer:
        ids = [app.send_task("slow.task").id for _ in range(3)]
        await wait_until(lambda: len(consumer._batches) == 3, 10, message="3 in the batch")
        await bus.revoke(ids[1])
        await wait_until(lambda: ids[1] in consumer._pipeline().revoked, 5,
                         message="the consumer heard the revoke")
        await wait_until(lambda: batches, 10, message="the batch ran")
        await wait_until(lambda: revoked_is(bus, 1), 10, message="the revoked one acked")
        await get_raises_revoked(app, ids[1])
    app.close()
    assert batches == [[ids[0], ids[2]]]


async def test_a_celery_worker_in_the_fleet_honours_our_revoke(
    redis_url: str, queue_name: str, bus: EventBus,
) -> None:
    """Our revoke is Celery's broadcast too: a stock worker (remote control on) discards the
    task when its eta comes and stores REVOKED, as for ``celery control revoke``."""
    app = client(redis_url, queue_name)
    with celery_worker(redis_url, queue_name, env={
            "INTEROP_REMOTE_CONTROL": "1", "INTEROP_RESULT_BACKEND": redis_url}) as worker:
        revoked = app.send_task("user.created", args=[{"n": 1}], countdown=1.5)
        await bus.revoke(revoked.id)
        kept = app.send_task("user.created", args=[{"n": 2}], countdown=1.5)
        await wait_until(lambda: bus.redis.llen(received_key(queue_name)), 20,
                         message=f"the kept task ran:\n{worker.log()[-2000:]}")
        await get_raises_revoked(app, revoked.id)
        received = await bus.redis.lrange(received_key(queue_name), 0, -1)
    app.close()
    assert [orjson.loads(r)["id"] for r in received] == [kept.id]
