"""Consumer subprocesses for tests: started by PID, always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_consumer(
    redis_url: str, queue: str, *, app: str = "tests.apps.counting", concurrency: int = 50,
    extra_env: dict[str, str] | None = None, args: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "EARNORM_REDIS_URI": redis_url,
        "EARNORM_QUEUE": queue,
        "PYTHONPATH": str(ROOT),
        **(extra_env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "earnorm.events.consumer", "--app", app,
         "--concurrency", str(concurrency), "--log-level", "WARNING", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextmanager
def consumer_process(redis_url: str, queue: str, **kwargs: object) -> Iterator[
    subprocess.Popen[bytes]
]:
    process = start_consumer(redis_url, queue, **kwargs)  # type: ignore[arg-type]
    try:
        yield process
    finally:
        stop(process)
