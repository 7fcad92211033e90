"""Starts and stops real ``celery worker`` processes, and reads what their tasks recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from tests.interop.celery_app import ready_key, received_key

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class CeleryWorker:
    process: subprocess.Popen[bytes]
    queue: str
    redis_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        client = redis.Redis.from_url(self.redis_url)
        try:
            return [json.loads(r) for r in client.lrange(received_key(self.queue), 0, -1)]
        finally:
            client.close()

    def count(self) -> int:
        client = redis.Redis.from_url(self.redis_url)
        try:
            return int(client.llen(received_key(self.queue)))
        finally:
            client.close()

    def alive(self) -> bool:
        return self.process.poll() is None


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Warm shutdown by process group (the prefork children too), then SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def celery_worker(
    redis_url: str, queue: str, *, pool: str = "solo", concurrency: int = 1,
    timeout: float = 60.0, prefetch_multiplier: int = 1, env: dict[str, str] | None = None,
) -> Iterator[CeleryWorker]:
    """A ``celery worker`` on ``queue``; yields once its ``worker_ready`` signal has fired."""
    client = redis.Redis.from_url(redis_url)
    client.delete(ready_key(queue), received_key(queue))
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, read by log()
        prefix="celery-worker-", suffix=".log", delete=False
    )
    env = {
        **os.environ,
        "INTEROP_REDIS_URL": redis_url,
        "INTEROP_QUEUE": queue,
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.interop.celery_app", "worker",
         f"--pool={pool}", f"--concurrency={concurrency}", "-Q", queue,
         "-n", f"interop-{uuid.uuid4().hex[:8]}@%h", "--loglevel=INFO",
         "--without-gossip", "--without-mingle", "--without-heartbeat",
         f"--prefetch-multiplier={prefetch_multiplier}"],
        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log_file.close()
    worker = CeleryWorker(process, queue, redis_url, Path(log_file.name))
    try:
        deadline = time.monotonic() + timeout
        while not client.exists(ready_key(queue)):
            if not worker.alive():
                raise AssertionError(f"celery worker exited at start:\n{worker.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"celery worker not ready after {timeout}s:\n{worker.log()}")
            time.sleep(0.05)
        yield worker
    finally:
        _stop(process)
        client.delete(ready_key(queue), received_key(queue))
        client.close()
        worker.log_path.unlink(missing_ok=True)
