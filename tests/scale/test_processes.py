"""``--processes N``: a supervisor with N consumer processes, each its own consumer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from earnorm import EventBus
from earnorm.events._broker.keys import text
from tests.helpers import wait_until
from tests.processes import ROOT, consumer_process, counting_env, publish_counted, stop

pytestmark = pytest.mark.anyio


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


async def _alive(bus: EventBus) -> list[str]:
    return [c["id"] for c in (await bus.stats())["consumers"] if c["status"] == "alive"]


async def test_two_processes_show_as_two_consumers_and_a_killed_one_is_replaced(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    bus = await EventBus.connect(redis_url, queue_name=queue_name, heartbeat_interval=0.2,
                                 heartbeat_timeout=1.0)
    ids = await publish_counted(bus, 2000)
    env = counting_env(0.01)
    with consumer_process(redis_url, queue_name, concurrency=10, extra_env=env,
                          args=("--processes", "2")) as supervisor:
        await wait_until(lambda: len(_children(supervisor.pid)) == 2, 15, message="2 children")
        await wait_until(lambda: _count(bus, 2), 20, message="two consumers alive in stats")
        first = set(await _alive(bus))
        await wait_until(lambda: _handled(redis, queue_name, 200), 30, message="200 handled")
        victim = _children(supervisor.pid)[0]
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: victim not in _children(supervisor.pid)
                         and len(_children(supervisor.pid)) == 2, 15,
                         message="the killed child replaced")
        await wait_until(lambda: _handled(redis, queue_name, len(ids)), 90,
                         message="every event handled")
        await wait_until(lambda: _count(bus, 2), 20, message="two consumers alive again")
        assert set(await _alive(bus)) != first  # the replacement is a new consumer
        handled = await redis.hkeys(f"{queue_name}:handled")
        assert {text(k) for k in handled} == set(ids)  # nothing lost
        children = _children(supervisor.pid)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0
        assert all(_gone(child) for child in children)
    await bus.close()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


async def _count(bus: EventBus, n: int) -> bool:
    return len(await _alive(bus)) == n


async def _handled(redis: Redis, queue: str, n: int) -> bool:
    return int(await redis.hlen(f"{queue}:handled")) >= n


def _run(args: list[str], redis_url: str, queue: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EARNORM_REDIS_URI": redis_url, "EARNORM_QUEUE": queue,
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "earnorm.events.consumer", *args], cwd=ROOT,
                          check=False, env=env, capture_output=True, text=True, timeout=60)


def test_children_that_keep_dying_stop_the_supervisor_with_exit_5(
    redis_url: str, queue_name: str
) -> None:
    result = _run(["--app", "tests.apps.dies_at_start", "--processes", "2",
                   "--max-restarts", "1"], redis_url, queue_name)
    assert result.returncode == 5, result.stderr
    assert "died 2 times" in result.stderr


def test_a_bad_app_stops_the_supervisor_with_the_childs_exit_code(
    redis_url: str, queue_name: str
) -> None:
    result = _run(["--app", "no.such.module", "--processes", "2"], redis_url, queue_name)
    assert result.returncode == 4, result.stderr
    assert "could not be imported" in result.stderr


def test_processes_must_be_positive(redis_url: str, queue_name: str) -> None:
    result = _run(["--processes", "0"], redis_url, queue_name)
    assert result.returncode == 2
    assert "--processes must be >= 1" in result.stderr


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_the_supervisors_death_takes_its_children_with_it(
    redis_url: str, queue_name: str
) -> None:
    """SIGKILL of the supervisor alone: the children get the parent-death signal and stop."""
    process = subprocess.Popen(
        [sys.executable, "-m", "earnorm.events.consumer", "--app", "tests.apps.counting",
         "--processes", "2"], cwd=ROOT, start_new_session=True,
        env={**os.environ, "EARNORM_REDIS_URI": redis_url, "EARNORM_QUEUE": queue_name,
             "PYTHONPATH": str(ROOT)})
    children: list[int] = []

    def two_children() -> bool:
        children[:] = _children(process.pid)
        return len(children) == 2
    try:
        assert _wait(two_children, 15)
        process.kill()  # the supervisor only, not its process group
        process.wait(timeout=10)
        assert _wait(lambda: all(_gone(c) for c in children), 30)
    finally:
        stop(process)
        for child in children:
            if not _gone(child):
                os.kill(child, signal.SIGKILL)


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _zombie(pid)


def test_a_child_whose_supervisor_is_already_gone_does_not_start(
    redis_url: str, queue_name: str
) -> None:
    """The parent-death signal is set after exec, so a supervisor that died before that is
    caught by the child itself: its parent is not the supervisor it was given."""
    done = subprocess.run(
        [sys.executable, "-m", "earnorm.events.consumer", "--app", "tests.apps.counting"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "EARNORM_REDIS_URI": redis_url, "EARNORM_QUEUE": queue_name,
             "PYTHONPATH": str(ROOT), "EARNORM_SUPERVISOR_PID": "1"})
    assert done.returncode == 0
    assert "supervisor 1 is gone: not starting" in done.stderr
    assert "consumer c-" not in done.stderr
