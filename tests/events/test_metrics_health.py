"""``/metrics`` (parsed with prometheus-client's own parser: exact counts, celery-exporter's
names), ``/healthz`` and ``/readyz`` in each state, and ``python -m earnorm.events health``."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from typing import Any

import anyio
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry, start_local_redis
from earnorm.events._tools.embedded import free_port
from earnorm.events._wire.encode import encode_call
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

GOOD, BAD = 7, 3


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def registry() -> HandlerRegistry:
    registry = HandlerRegistry()

    async def ok(event: Event) -> None:
        return None

    async def bad(event: Event) -> None:
        raise ValueError("declined")

    registry.register("metric.ok", ok)
    registry.register("metric.next", ok, name="next")
    registry.register("metric.bad", bad, retry_policy={"max_retries": 0})
    return registry


async def test_metrics_count_exactly_with_celery_exporter_names(
    redis_url: str, queue_name: str
) -> None:
    port = free_port()
    bus = await EventBus.connect(redis_url, queue_name=queue_name, heartbeat_interval=0.1,
                                 heartbeat_timeout=1)
    async with Consumer(bus=bus, registry=registry(), metrics_port=port) as consumer:
        await bus.publish_batch([Event(name="metric.ok") for _ in range(GOOD)])
        await bus.publish_batch([Event(name="metric.bad") for _ in range(BAD)])
        await bus.publish(Event(name="metric.unknown"))  # an event nobody subscribes to
        await bus.redis.lpush(queue_name, encode_call(  # a Celery task nobody runs
            "metric.unknown_task", "no-such-task", [], {}, queue_name))
        await bus.redis.lpush(queue_name, encode_call(
            "metric.ok", "with-a-link", [], {}, queue_name,
            embed={"callbacks": [{"task": "metric.next", "args": [], "kwargs": {},
                                  "options": {}, "subtask_type": None, "immutable": True}]}))
        await wait_until(lambda: consumer.processed == GOOD + 2 and consumer.failed == BAD + 1,
                         10)

        def gauges_refreshed() -> bool:
            return scrape(port).get(("earnorm_failed_jobs", (("queue_name", queue_name),))) \
                == BAD + 1

        await wait_until(lambda: anyio.to_thread.run_sync(gauges_refreshed), 10)
        samples = await anyio.to_thread.run_sync(lambda: scrape(port))
    await bus.close()
    node = consumer.node_name

    def task(name: str, metric: str, **extra: str) -> float:
        labels = {"name": name, "hostname": node, "queue_name": queue_name, **extra}
        return samples[(metric, tuple(sorted(labels.items())))]

    assert task("metric.ok", "celery_task_received_total") == GOOD + 1
    assert task("metric.ok", "celery_task_started_total") == GOOD + 1
    assert task("metric.ok", "celery_task_succeeded_total") == GOOD + 1
    assert task("metric.next", "celery_task_sent_total") == 1  # the link it published
    assert task("metric.bad", "celery_task_failed_total", exception="ValueError") == BAD
    assert task("metric.ok", "celery_task_runtime_count") == GOOD + 1
    assert task("metric.unknown_task", "celery_task_rejected_total") == 1
    assert samples[("earnorm_unhandled_events_total", (("name", "metric.unknown"),
                                                       ("queue_name", queue_name)))] == 1
    assert samples[("celery_queue_length", (("queue_name", queue_name),))] == 0
    assert samples[("celery_worker_up", (("hostname", node),))] == 1
    assert samples[("earnorm_dead_letters_total", (("queue_name", queue_name),
                                                   ("reason", "handler_error")))] == BAD
    assert samples[("earnorm_dead_letters_total", (("queue_name", queue_name),
                                                   ("reason", "no_handler")))] == 1
    assert ("earnorm_recoveries_total", (("queue_name", queue_name),)) in samples


async def test_healthz_and_readyz_answer_in_each_state(queue_name: str) -> None:
    server = start_local_redis()
    port = free_port()
    release = anyio.Event()
    registry = HandlerRegistry()

    async def hang(event: Event) -> None:
        await release.wait()

    registry.register("metric.hang", hang)
    bus = await EventBus.connect(server.url, queue_name=queue_name)
    consumer = Consumer(bus=bus, registry=registry, concurrency=1, prefetch=1,
                        poll_interval=0.1, metrics_port=port)
    try:
        async with consumer:
            assert await anyio.to_thread.run_sync(lambda: get(port, "/healthz")) == (200, "ok\n")
            assert (await anyio.to_thread.run_sync(lambda: get(port, "/readyz")))[0] == 200
            # Its one slot hangs and a backlog waits: connected, but not consuming.
            await bus.publish_batch([Event(name="metric.hang") for _ in range(5)])

            def not_ready() -> bool:
                return get(port, "/readyz")[0] == 503

            await wait_until(lambda: anyio.to_thread.run_sync(not_ready),
                             consumer.ready_window + 5, interval=0.2, message="not ready")
            status, body = await anyio.to_thread.run_sync(lambda: get(port, "/readyz"))
            assert "not consuming" in body and "waiting" in body
            release.set()
            await wait_until(lambda: anyio.to_thread.run_sync(
                lambda: get(port, "/readyz")[0] == 200), 10, message="ready again")
            server.kill()
            status, body = await anyio.to_thread.run_sync(lambda: get(port, "/healthz"))
            assert status == 503 and "redis unreachable" in body
            assert (await anyio.to_thread.run_sync(lambda: get(port, "/nope")))[0] == 404
            server = start_local_redis(server.port)
    finally:
        await bus.close()
        server.stop()


async def health(redis_url: str, queue: str) -> tuple[int, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "EARNORM_REDIS_URI")}
    result = await anyio.run_process(
        [sys.executable, "-m", "earnorm.events", "health", "--json", "--redis-uri", redis_url,
         "--queue", queue], check=False, env=env)
    return result.returncode, orjson.loads(result.stdout)


async def test_health_command_exits_ok_degraded_down(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    async with Consumer(bus=bus, registry=registry()):
        code, report = await health(redis_url, queue_name)
        assert (code, report["status"], report["live_consumers"]) == (0, "ok", 1)
    await bus.publish(Event(name="metric.ok"))  # waiting, and no consumer runs
    code, report = await health(redis_url, queue_name)
    assert (code, report["status"]) == (1, "degraded")
    assert report["reasons"] == ["1 event(s) waiting and no live consumer"]
    code, report = await health(f"redis://127.0.0.1:{free_port()}/0", queue_name)
    assert (code, report["status"]) == (2, "down")
    await bus.close()
