"""arq peer: publishes with ``ArqRedis.enqueue_job``, runs ``arq arq_app.WorkerSettings``."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from typing import Any

from benchlib import main
from procs import WorkerSpec

_CONCURRENCY = {"default": 10, "tuned": 100, "io": 100}


class ArqAdapter:
    def __init__(self) -> None:
        self.name = "arq"
        self.variants = {
            "drain": {"default": "max_jobs 10", "tuned": "max_jobs 100"},
            "io": {"io": "max_jobs 100"},
        }
        self.skips: dict[str, str] = {}
        self.batch_api = "gather(enqueue_job) x100 (no batch API)"

    async def open(self, redis_url: str) -> None:
        os.environ["BENCH_REDIS_URL"] = redis_url
        from arq import create_pool
        from arq_app import REDIS_SETTINGS

        self.pool = await create_pool(REDIS_SETTINGS, default_queue_name="bench")

    async def close(self) -> None:
        await self.pool.aclose()

    async def publish(self, task: str, data: dict[str, Any], due: float | None) -> None:
        defer = None if due is None else datetime.fromtimestamp(due, tz=UTC)
        await self.pool.enqueue_job(task, data, _defer_until=defer)

    async def publish_batch(self, task: str, items: list[dict[str, Any]]) -> None:
        await asyncio.gather(*(self.pool.enqueue_job(task, data) for data in items))

    def worker(self, workload: str, variant: str) -> WorkerSpec:
        concurrency = _CONCURRENCY.get(variant, 10)
        argv = [sys.executable, "-m", "arq", "arq_app.WorkerSettings"]
        return WorkerSpec(argv=argv, env={"BENCH_CONCURRENCY": str(concurrency)})

    async def delayed_pending(self) -> int | None:
        return None


if __name__ == "__main__":
    main(ArqAdapter())
