"""``python -m earnorm.events.consumer`` fails with one clear line and a distinct exit code."""

from __future__ import annotations

import os
import sys

import anyio
import pytest

from earnorm.events._tools.embedded import free_port

pytestmark = pytest.mark.anyio


async def run_consumer(*args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "EARNORM_REDIS_URI")}
    result = await anyio.run_process(
        [sys.executable, "-m", "earnorm.events.consumer", *args], check=False, env=env,
    )
    return result.returncode, result.stderr.decode()


async def test_an_app_that_cannot_be_imported_is_one_line_and_exit_code_4() -> None:
    code, err = await run_consumer("--app", "does_not_exist", "--redis-uri",
                                   "redis://127.0.0.1:1/0")
    assert code == 4
    assert err.strip().splitlines() == [
        "error: --app 'does_not_exist' could not be imported: ModuleNotFoundError: "
        "No module named 'does_not_exist'"
    ]


async def test_an_unreachable_redis_is_one_line_and_exit_code_3() -> None:
    port = free_port()
    code, err = await run_consumer("--redis-uri", f"redis://:hunter2@127.0.0.1:{port}/0",
                                   "--log-level", "ERROR")
    lines = err.strip().splitlines()
    assert code == 3
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: cannot reach Redis at redis://:***@127.0.0.1:{port}/0")
    assert "hunter2" not in err


async def test_a_bad_setting_is_one_line_and_exit_code_2(redis_url: str) -> None:
    code, err = await run_consumer("--redis-uri", redis_url, "--heartbeat-interval", "5",
                                   "--heartbeat-timeout", "1", "--log-level", "ERROR")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: event_config.heartbeat_timeout must be greater than heartbeat_interval"
    ]


async def test_recycling_limits_that_cannot_work_are_refused_with_exit_code_2(
    redis_url: str
) -> None:
    """A memory limit under the idle process's own (each replacement would retire at once),
    one that reads like Celery's KiB, and a limit for several queues in one process."""
    below = await run_consumer("--redis-uri", redis_url, "--max-memory-per-child", "5",
                               "--log-level", "ERROR")
    kib = await run_consumer("--redis-uri", redis_url, "--max-memory-per-child", "2000000")
    queues = await run_consumer("--redis-uri", redis_url, "--max-tasks-per-child", "10",
                                "--queue", "a", "--queue", "b")
    assert below[0] == 2
    assert "max_memory_mb=5 is below this consumer's resident memory at start" in below[1]
    assert kib == (2, "error: --max-memory-per-child is in MB (Celery's counts KiB): 2e+06 MB "
                      "is more than a terabyte\n")
    assert queues == (2, "error: --max-tasks-per-child / --max-memory-per-child take one "
                         "--queue\n")
