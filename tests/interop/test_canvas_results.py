"""Celery features that must not fail silently, against a real Celery producer (and worker):
custom headers reach handlers, chains and errbacks are carried on, results reach
``AsyncResult.get()``, protocol-1 messages run, and every failure a client waits on is written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import orjson
import pytest
from celery import Celery, chain
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from tests.helpers import wait_until
from tests.interop.celery_app import make_app
from tests.interop.harness import CeleryWorker

pytestmark = pytest.mark.anyio

FAST = {"max_retries": 1, "interval_start": 0.05, "interval_step": 0, "interval_max": 0.05}
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def producer_app(redis_url: str, queue: str, **conf: Any) -> Celery:
    app = make_app(redis_url, queue)
    app.conf.update(**conf)
    for name in ("step.one", "step.two", "step.three", "user.created", "user.updated",
                 "order.placed", "results.add", "results.fail", "failing.task", "errback.seen"):
        app.task(name=name, shared=False)(_never_here)
    return app


def _never_here(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("producer-side task must not run")


@pytest.fixture
def bus_config(redis_url: str) -> dict[str, Any]:
    return {"retry_policy": FAST, "result_backend": redis_url}


async def test_custom_headers_reach_the_handler_on_every_attempt_and_after_retry_job(
    redis_url: str, queue_name: str, bus: EventBus
) -> None:
    seen: list[tuple[int, dict[str, Any]]] = []
    registry = HandlerRegistry()

    async def failing(event: Event) -> None:
        seen.append((event.retries, dict(event.headers)))
        raise RuntimeError("fails every time: retried once, then dead-lettered")

    registry.register("failing.task", failing)
    app = producer_app(redis_url, queue_name)
    task_id = app.send_task("failing.task", args=[{"n": 1}],
                            headers={"traceparent": TRACE, "tenant": "acme"}).id
    async with Consumer(bus=bus, registry=registry, concurrency=2):
        await wait_until(lambda: bus.redis.hexists(f"{queue_name}:failed", task_id), 10,
                         message="dead-lettered after its retry")
        await bus.retry_job(task_id)
        await wait_until(lambda: len(seen) == 3, 10, message="run again by retry_job")
    app.close()
    expected = {"traceparent": TRACE, "tenant": "acme"}
    assert [(retries, headers) for retries, headers in seen] == [
        (0, expected), (1, expected), (0, expected)]


async def test_headers_published_by_earnorm_are_read_back(bus: EventBus) -> None:
    got: list[dict[str, Any]] = []
    registry = HandlerRegistry()

    async def record(event: Event) -> None:
        got.append(dict(event.headers))

    registry.register("header.check", record)
    async with Consumer(bus=bus, registry=registry):
        await bus.publish(Event(name="header.check"), headers={"tenant": "acme"})
        await wait_until(lambda: got, 5, message="the event")
    assert got == [{"tenant": "acme"}]


async def test_a_chain_of_three_earnorm_handlers_runs_in_order_with_results_passed_along(
    redis_url: str, queue_name: str, bus: EventBus
) -> None:
    calls: list[tuple[str, tuple[Any, ...]]] = []
    registry = HandlerRegistry()

    def step(name: str, add: int) -> Any:
        async def run(event: Event) -> int:
            calls.append((name, event.args or ()))
            return int((event.args or (0,))[0]) + add
        return run

    for name, add in (("step.one", 1), ("step.two", 10), ("step.three", 100)):
        registry.register(name, step(name, add), name=f"chain:{name}")
    app = producer_app(redis_url, queue_name, result_backend=redis_url, task_ignore_result=False)
    flow = chain(app.signature("step.one", args=[1]), app.signature("step.two"),
                 app.signature("step.three"))
    result = flow.apply_async()
    async with Consumer(bus=bus, registry=registry):
        await wait_until(lambda: len(calls) == 3, 10, message="three steps")
        # The last step's result is in the backend, under the chain's result id.
        value = await anyio.to_thread.run_sync(lambda: result.get(timeout=5))
    app.close()
    assert calls == [("step.one", (1,)), ("step.two", (2,)), ("step.three", (12,))]
    assert value == 112


async def test_a_chain_mixing_an_earnorm_step_and_a_celery_worker_step_completes(
    solo_worker: CeleryWorker, redis_url: str, worker_queue: str, queue_name: str,
    bus: EventBus,
) -> None:
    """ours -> the Celery worker's 'user.updated' (on its queue) -> ours again."""
    calls: list[tuple[str, tuple[Any, ...]]] = []
    registry = HandlerRegistry()

    async def first(event: Event) -> dict[str, Any]:
        calls.append(("step.one", event.args or ()))
        return {"from": "earnorm"}

    async def last(event: Event) -> None:
        calls.append(("step.three", event.args or ()))

    registry.register("step.one", first)
    registry.register("step.three", last)
    app = producer_app(redis_url, queue_name)
    flow = chain(app.signature("step.one", args=[7]),
                 app.signature("user.updated").set(queue=worker_queue),
                 app.signature("step.three").set(queue=queue_name))
    flow.apply_async()
    async with Consumer(bus=bus, registry=registry):
        await wait_until(lambda: len(calls) == 2, 20, message="both of our steps")
    app.close()
    assert calls[0] == ("step.one", (7,))
    [celery_step] = [r for r in solo_worker.records() if r["task"] == "user.updated"]
    assert celery_step["args_repr"] == repr([{"from": "earnorm"}])
    assert calls[1][0] == "step.three"  # the Celery task returned None: it is prepended


async def test_link_error_runs_when_a_handler_exhausts_its_retries(
    redis_url: str, queue_name: str, bus: EventBus
) -> None:
    errback_args: list[tuple[Any, ...]] = []
    registry = HandlerRegistry()

    async def failing(event: Event) -> None:
        raise ValueError("card declined")

    async def errback(event: Event) -> None:
        errback_args.append(event.args or ())

    registry.register("failing.task", failing)
    registry.register("errback.seen", errback)
    app = producer_app(redis_url, queue_name)
    task_id = app.tasks["failing.task"].apply_async(
        args=[{"n": 1}], link_error=app.signature("errback.seen", args=["tidy up"])).id
    async with Consumer(bus=bus, registry=registry):
        await wait_until(lambda: errback_args, 10, message="the errback")
        job = await bus.get_failed_job(task_id)
    app.close()
    assert errback_args == [(task_id, "tidy up")]  # Celery's errback call: the task id first
    assert job["attempts"] == 2 and job["reason"] == "handler_error"


async def test_async_result_get_returns_the_value_raises_the_error_and_ignore_result_stores_none(
    redis_url: str, queue_name: str, bus: EventBus, redis: Redis
) -> None:
    registry = HandlerRegistry()

    async def add(event: Event) -> int:
        return int(sum(event.args or ()))

    async def fail(event: Event) -> None:
        raise ValueError("no such account")

    registry.register("results.add", add, retry_policy={"max_retries": 0})
    registry.register("results.fail", fail, retry_policy={"max_retries": 0})
    app = producer_app(redis_url, queue_name, result_backend=redis_url, task_ignore_result=False)
    ok = app.send_task("results.add", args=[2, 3])
    bad = app.send_task("results.fail", args=[1])
    ignored = app.send_task("results.add", args=[1, 1], ignore_result=True)
    async with Consumer(bus=bus, registry=registry):
        value = await anyio.to_thread.run_sync(lambda: ok.get(timeout=10))
        with pytest.raises(Exception) as raised:
            await anyio.to_thread.run_sync(lambda: bad.get(timeout=10))
        await wait_until(lambda: bus.redis.hexists(f"{queue_name}:failed", bad.id), 5)
        await wait_until(_drained(redis, queue_name), 5, message="the ignored one handled")
    assert value == 5
    assert type(raised.value).__name__ == "ValueError"
    assert "no such account" in str(raised.value)
    assert not await redis.exists(f"celery-task-meta-{ignored.id}")
    assert await redis.ttl(f"celery-task-meta-{ok.id}") > 3600
    app.close()


def _drained(redis: Redis, queue: str) -> Any:
    async def check() -> bool:
        return await redis.llen(queue) == 0
    return check


async def test_a_protocol_1_message_runs_and_its_result_and_retry_come_back(
    redis_url: str, queue_name: str, bus: EventBus, redis: Redis
) -> None:
    """Celery's own ``send_task`` with ``task_protocol=1`` (a Celery 5.7 worker still runs it):
    translated into the protocol-2 message it stands for; a retry is published as protocol 2."""
    app = producer_app(redis_url, queue_name, task_protocol=1, result_backend=redis_url,
                       task_ignore_result=False)
    ok = app.send_task("results.add", args=[2, 3])
    flaky = app.send_task("results.fail", args=[1])
    raw = await redis.lindex(queue_name, 0)
    assert raw is not None and "task" not in orjson.loads(raw)["headers"]  # really protocol 1
    attempts: list[int] = []
    registry = HandlerRegistry()

    async def add(event: Event) -> int:
        return int(sum(event.args or ()))

    async def fail_once(event: Event) -> str:
        attempts.append(event.retries)
        if not event.retries:
            raise ConnectionError("try again")
        return "done on retry"
    registry.register("results.add", add)
    registry.register("results.fail", fail_once)
    async with Consumer(bus=bus, registry=registry):
        assert await anyio.to_thread.run_sync(_get_within(ok, 10)) == 5
        assert await anyio.to_thread.run_sync(_get_within(flaky, 10)) == "done on retry"
    assert attempts == [0, 1]
    assert await bus.get_failed_jobs() == []
    app.close()


async def _noop(event: Event) -> None:
    return None


def test_a_groups_results_are_collected_by_group_result_get(
    redis_url: str, queue_name: str
) -> None:
    """Celery's native group join only works from the client's main thread (with a Celery
    worker too), so the consumer runs in its own process here."""
    from celery import group

    from tests.processes import consumer_process

    app = producer_app(redis_url, queue_name, result_backend=redis_url, task_ignore_result=False)
    with consumer_process(redis_url, queue_name, app="tests.interop.result_app",
                          args=("--result-backend", redis_url)):
        result = group(app.signature("results.add", args=[i]) for i in range(5)).apply_async()
        values = result.get(timeout=20)
    app.close()
    assert values == [0, 2, 4, 6, 8]


def test_a_chord_of_earnorm_parts_calls_its_body_with_the_results(
    redis_url: str, queue_name: str
) -> None:
    """The Celery client writes the chord's size; our parts join it in the result backend, the
    last one publishes the body; chord.get() returns the body's result. A failed part fails the
    body with ChordError, as Celery does."""
    import json
    import subprocess
    import sys

    from tests.processes import ROOT, consumer_process

    with consumer_process(redis_url, queue_name, app="tests.interop.result_app",
                          args=("--result-backend", redis_url)):
        done = subprocess.run(
            [sys.executable, "-m", "tests.interop.chord_client", redis_url, queue_name],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["value"] == 0 + 2 + 4 + 6
    assert seen["raised"] == "ValueError: odd 1"
    assert seen["body_status"] == "FAILURE"
    assert seen["body_error"].startswith("ChordError: Dependency")
    assert "odd 1" in seen["body_error"]


def test_a_chord_split_between_a_celery_worker_and_our_consumer_completes(
    redis_url: str, queue_name: str
) -> None:
    """Both join the same chord keys in the result backend; whoever finishes last calls the
    body."""
    import json
    import subprocess
    import sys

    from tests.interop.harness import celery_worker
    from tests.processes import ROOT, consumer_process

    celery_queue = f"{queue_name}:celery"
    with celery_worker(redis_url, celery_queue,
                       env={"INTEROP_RESULT_BACKEND": redis_url}) as worker, \
            consumer_process(redis_url, queue_name, app="tests.interop.result_app",
                             args=("--result-backend", redis_url)):
        done = subprocess.run(
            [sys.executable, "-m", "tests.interop.chord_client", redis_url, queue_name,
             celery_queue], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        celery_parts = sorted(r["args_repr"] for r in worker.records())
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"value": 0 + 2 + 4 + 6}
    assert celery_parts == ["[0]", "[1]"], "two parts ran on the Celery worker"


async def test_every_failure_a_client_waits_on_raises_what_a_celery_worker_would(
    redis_url: str, queue_name: str, bus: EventBus, redis: Redis
) -> None:
    """Expired, undecodable with its id in the headers, past the delivery limit: each writes
    the state a Celery worker would, so ``AsyncResult.get()`` raises (within a second) instead
    of waiting forever."""
    import billiard.exceptions
    import kombu.exceptions
    from celery.exceptions import TaskRevokedError

    from earnorm.events._wire.encode import encode_call

    app = producer_app(redis_url, queue_name, result_backend=redis_url, task_ignore_result=False)
    expired = app.send_task("results.add", args=[1, 2],
                            expires=datetime.now(UTC) - timedelta(seconds=5))
    await redis.lpush(queue_name, orjson.dumps({
        "body": "not base64!", "content-type": "application/json",
        "headers": {"task": "results.add", "id": "undecodable-task"},
        "properties": {"body_encoding": "base64", "delivery_tag": "t"}}))
    # A message its consumers died holding 9 times (max_deliveries is 5).
    doomed = encode_call("results.add", "doomed-task", [1, 2], {}, queue_name)
    await redis.rpush(f"{queue_name}:recovered", b"9:c-a,c-b:" + doomed)
    registry = HandlerRegistry()
    registry.register("results.add", _noop)
    cases = [(expired, TaskRevokedError, "REVOKED"),
             (app.AsyncResult("undecodable-task"), kombu.exceptions.DecodeError, "FAILURE"),
             (app.AsyncResult("doomed-task"), billiard.exceptions.WorkerLostError, "FAILURE")]
    async with Consumer(bus=bus, registry=registry):
        for result, error, state in cases:
            with pytest.raises(error):
                await anyio.to_thread.run_sync(_get_within(result, 5))
            assert result.state == state
    app.close()


def _get_within(result: Any, seconds: float) -> Any:
    return lambda: result.get(timeout=seconds)


async def test_a_message_too_large_to_fetch_tells_its_client(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    """Diverted inside Redis (never fetched), under the id its headers name: the client's
    ``get()`` raises kombu's DecodeError, as for a message a worker could not decode."""
    import kombu.exceptions

    bus = await EventBus.connect(redis_url, queue_name=queue_name, result_backend=redis_url,
                                 max_message_bytes=64 * 1024)
    app = producer_app(redis_url, queue_name, result_backend=redis_url, task_ignore_result=False)
    big = app.send_task("results.add", args=["x" * 100_000])
    async with Consumer(bus=bus, registry=HandlerRegistry()):
        with pytest.raises(kombu.exceptions.DecodeError, match="max_message_bytes"):
            await anyio.to_thread.run_sync(_get_within(big, 5))
    assert (await bus.get_failed_job(big.id))["reason"] == "too_large"
    app.close()
    await bus.close()


async def test_time_limits_from_apply_async_reach_async_handlers(
    redis_url: str, queue_name: str, bus: EventBus
) -> None:
    """``send_task(soft_time_limit=, time_limit=)`` writes Celery's ``timelimit`` header: the
    soft limit is raised inside the handler, which catches it and returns a result; the hard
    one cancels the handler and the client's ``get()`` raises TimeLimitExceeded."""
    from earnorm import SoftTimeLimitExceeded

    app = producer_app(redis_url, queue_name, result_backend=redis_url, task_ignore_result=False)
    soft = app.send_task("results.add", args=[1], soft_time_limit=0.1, time_limit=5)
    hard = app.send_task("results.fail", args=[1], time_limit=0.1)
    registry = HandlerRegistry()

    async def cleans_up(event: Event) -> str:
        try:
            await anyio.sleep(5)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "finished"

    async def hangs(event: Event) -> None:
        await anyio.sleep(5)
    registry.register("results.add", cleans_up)
    registry.register("results.fail", hangs, retry_policy={"max_retries": 0})
    async with Consumer(bus=bus, registry=registry):
        assert await anyio.to_thread.run_sync(_get_within(soft, 5)) == "cleaned up"
        with pytest.raises(Exception) as raised:
            await anyio.to_thread.run_sync(_get_within(hard, 5))
    assert type(raised.value).__name__ == "TimeLimitExceeded"
    assert (await bus.get_failed_job(hard.id))["error_type"] == "TimeLimitExceeded"
    app.close()
