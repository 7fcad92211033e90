"""An EarnORM consumer with ``celery_events=True`` is seen as a Celery worker: ``celery
inspect`` and ``celery status`` list it, ``celery control shutdown`` stops it, and a real Flower
shows it and the tasks it ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from earnorm.events._tools.embedded import free_port
from tests.helpers import wait_until
from tests.processes import stop

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def celery_cli(redis_url: str, queue: str, *args: str, timeout: float = 30) -> str:
    env = {**os.environ, "INTEROP_REDIS_URL": redis_url, "INTEROP_QUEUE": queue,
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.interop.celery_app", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return done.stdout + done.stderr


def registry_with(started: anyio.Event, release: anyio.Event) -> HandlerRegistry:
    registry = HandlerRegistry()

    async def slow(event: Event) -> str:
        started.set()
        await release.wait()
        return "done"

    registry.register("user.created", slow)
    registry.register("order.placed", slow, name="order")
    return registry


async def test_celery_inspect_status_and_control_see_our_consumer(
    redis_url: str, queue_name: str
) -> None:
    started, release = anyio.Event(), anyio.Event()
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    async with Consumer(bus=bus, registry=registry_with(started, release),
                        celery_events=True) as consumer:
        node = f"earnorm-{consumer.consumer_id}@"
        ping = await anyio.to_thread.run_sync(
            lambda: celery_cli(redis_url, queue_name, "inspect", "ping", "--timeout", "3"))
        assert node in ping and "pong" in ping, ping
        status = await anyio.to_thread.run_sync(
            lambda: celery_cli(redis_url, queue_name, "status", "--timeout", "3"))
        assert node in status and "online" in status, status
        registered = await anyio.to_thread.run_sync(
            lambda: celery_cli(redis_url, queue_name, "inspect", "registered", "--timeout", "3"))
        assert "user.created" in registered and "order.placed" in registered, registered
        job = await bus.publish(Event(name="user.created", data={"n": 1}))
        await started.wait()
        active = await anyio.to_thread.run_sync(
            lambda: celery_cli(redis_url, queue_name, "inspect", "active", "--timeout", "3"))
        assert job in active and "user.created" in active, active
        await bus.revoke("revoked-one")  # the queue's shared set, known to every consumer

        async def inspect_revoked() -> bool:
            revoked = await anyio.to_thread.run_sync(lambda: celery_cli(
                redis_url, queue_name, "inspect", "revoked", "--timeout", "3"))
            return "revoked-one" in revoked

        await wait_until(inspect_revoked, 15, message="celery inspect revoked lists it")
        release.set()
        hostname = next(line for line in ping.splitlines() if node in line).split()[1]
        hostname = hostname.rstrip(":")
        await anyio.to_thread.run_sync(lambda: celery_cli(
            redis_url, queue_name, "control", "shutdown", "--destination", hostname))
        await wait_until(consumer._stopped.is_set, 10,
                         message="stopped by celery control shutdown")
    await bus.close()


@pytest.fixture
def flower(redis_url: str, queue_name: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "INTEROP_REDIS_URL": redis_url, "INTEROP_QUEUE": queue_name,
           "PYTHONPATH": str(ROOT), "FLOWER_UNAUTHENTICATED_API": "true"}
    log = ROOT / ".cache" / f"flower-{port}.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.interop.celery_app", "flower",
             f"--port={port}", "--address=127.0.0.1", "--inspect_timeout=3000"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthcheck", timeout=1).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"flower did not start:\n{log.read_text()}") from None
                time.sleep(0.1)
        yield base
    finally:
        stop(process)
        log.unlink(missing_ok=True)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


async def test_flower_lists_our_consumer_and_the_tasks_it_ran(
    flower: str, redis_url: str, queue_name: str
) -> None:
    """Task events are pub/sub, fire-and-forget (for Celery workers too): the test first waits
    for Flower to list our node, then publishes until Flower has seen three of our tasks."""
    started, release = anyio.Event(), anyio.Event()
    release.set()
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    async with Consumer(bus=bus, registry=registry_with(started, release),
                        celery_events=True) as consumer:
        node = f"earnorm-{consumer.consumer_id}@"
        workers: dict[str, Any] = {}

        def worker_listed() -> bool:
            # Flower runs one broadcast per inspect method and records a key for each reply in
            # its window, so a loaded poll can list our node with a method missing (seen on CI).
            workers.update(get_json(f"{flower}/api/workers?refresh=1"))
            return any(name.startswith(node) and {"registered", "stats"} <= info.keys()
                       for name, info in workers.items())

        await wait_until(lambda: anyio.to_thread.run_sync(worker_listed), 60, interval=0.5,
                         message="Flower to list our consumer")
        jobs: list[str] = []
        tasks: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while True:
            jobs.append(await bus.publish(Event(name="user.created", data={"n": len(jobs)})))
            await anyio.sleep(0.5)
            tasks = await anyio.to_thread.run_sync(lambda: get_json(f"{flower}/api/tasks"))
            seen = [j for j in jobs if tasks.get(j, {}).get("state") == "SUCCESS"]
            if len(seen) >= 3:
                break
            assert time.monotonic() < deadline, f"Flower saw {len(seen)} of {len(jobs)} tasks"
    await bus.close()
    [ours] = [info for name, info in workers.items() if name.startswith(node)]
    assert ours["registered"] == ["order.placed", "user.created"]
    assert ours["stats"]["pool"]["max-concurrency"] == 100
    task = tasks[seen[0]]
    assert task["name"] == "user.created" and task["worker"].startswith(node)
