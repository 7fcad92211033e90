"""SAQ peer: publishes with ``Queue.enqueue``, runs ``saq saq_app.settings``."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from benchlib import main
from procs import WorkerSpec

_CONCURRENCY = {"default": 10, "tuned": 20, "io": 100}


class SaqAdapter:
    def __init__(self) -> None:
        self.name = "saq"
        self.variants = {
            "drain": {"default": "concurrency 10", "tuned": "concurrency 20"},
            "io": {"io": "concurrency 100"},
        }
        self.skips: dict[str, str] = {}
        self.batch_api = "gather(enqueue) x100 (no batch API; Queue.map also waits)"

    async def open(self, redis_url: str) -> None:
        os.environ["BENCH_REDIS_URL"] = redis_url
        from saq_app import queue

        self.queue = queue
        await queue.connect()

    async def close(self) -> None:
        await self.queue.disconnect()

    async def publish(self, task: str, data: dict[str, Any], due: float | None) -> None:
        # SAQ's ``scheduled`` is epoch seconds; a float keeps sub-second due times.
        await self.queue.enqueue(task, data=data, scheduled=due or 0)

    async def publish_batch(self, task: str, items: list[dict[str, Any]]) -> None:
        await asyncio.gather(*(self.queue.enqueue(task, data=data) for data in items))

    def worker(self, workload: str, variant: str) -> WorkerSpec:
        concurrency = _CONCURRENCY.get(variant, 10)
        argv = [sys.executable, "-m", "saq", "saq_app.settings", "--quiet"]
        return WorkerSpec(argv=argv, env={"BENCH_CONCURRENCY": str(concurrency)})

    async def delayed_pending(self) -> int | None:
        return None


if __name__ == "__main__":
    main(SaqAdapter())
