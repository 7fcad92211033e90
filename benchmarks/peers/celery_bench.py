"""Celery 5.7 peer: publishes with ``apply_async`` / ``group``, runs ``celery worker``."""

from __future__ import annotations

import sys
import time
from typing import Any

from benchlib import Skip, main
from procs import WorkerSpec

_POOLS = {
    # variant -> (pool, concurrency, prefetch multiplier, shared count)
    "default": ("solo", 1, 4, False),
    "tuned": ("solo", 1, 128, False),
    "prefork": ("prefork", 2, 4, True),
    "threads": ("threads", 100, 4, False),
    "gevent": ("gevent", 100, 4, False),
}


class CeleryAdapter:
    def __init__(self) -> None:
        self.name = "celery"
        self.variants = {
            "drain": {"default": "solo", "tuned": "solo, prefetch x128"},
            "io": {"prefork": "prefork(2)", "threads": "threads(100)", "gevent": "gevent(100)"},
        }
        self.skips: dict[str, str] = {}
        self.batch_api = "group().apply_async()"

    async def open(self, redis_url: str) -> None:
        import os

        os.environ["BENCH_REDIS_URL"] = redis_url
        from celery_app import app, io, noop

        self.app = app
        self.tasks = {"bench.noop": noop, "bench.io": io}

    async def close(self) -> None:
        self.app.close()

    async def publish(self, task: str, data: dict[str, Any], due: float | None) -> None:
        countdown = None if due is None else max(0.0, due - time.time())
        self.tasks[task].apply_async(args=(data,), countdown=countdown)

    async def publish_batch(self, task: str, items: list[dict[str, Any]]) -> None:
        from celery import group

        group(self.tasks[task].s(data) for data in items).apply_async()

    def worker(self, workload: str, variant: str) -> WorkerSpec:
        if variant not in _POOLS:
            raise Skip(f"unknown variant {variant}")
        pool, concurrency, prefetch, shared = _POOLS[variant]
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_app",
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-Q",
            "bench",
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        return WorkerSpec(argv=argv, shared=shared, env={"BENCH_PREFETCH": str(prefetch)})

    async def delayed_pending(self) -> int | None:
        return None  # Celery holds ETA tasks in worker memory: nothing to observe in Redis.


if __name__ == "__main__":
    main(CeleryAdapter())
