"""taskiq peer (taskiq-redis ListQueueBroker): publishes with ``kiq``, runs ``taskiq worker``."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from benchlib import main
from procs import WorkerSpec

_MAX_ASYNC_TASKS = {"default": 100, "tuned": 1000, "io": 1000}
_NO_DELAY = (
    "taskiq-redis brokers have no delayed delivery; it needs a separate `taskiq scheduler` "
    "process polling a schedule source at 1 s resolution"
)


class TaskiqAdapter:
    def __init__(self) -> None:
        self.name = "taskiq"
        self.variants = {
            "drain": {"default": "max-async-tasks 100", "tuned": "max-async-tasks 1000"},
            "io": {"io": "max-async-tasks 1000"},
        }
        self.skips = {"delay_spread": _NO_DELAY, "delay_instant": _NO_DELAY}
        self.batch_api = "gather(kiq) x100 (no batch API)"

    async def open(self, redis_url: str) -> None:
        os.environ["BENCH_REDIS_URL"] = redis_url
        from taskiq_app import broker, io, noop

        self.broker = broker
        self.tasks = {"bench.noop": noop, "bench.io": io}
        await broker.startup()

    async def close(self) -> None:
        await self.broker.shutdown()

    async def publish(self, task: str, data: dict[str, Any], due: float | None) -> None:
        await self.tasks[task].kiq(data)

    async def publish_batch(self, task: str, items: list[dict[str, Any]]) -> None:
        await asyncio.gather(*(self.tasks[task].kiq(data) for data in items))

    def worker(self, workload: str, variant: str) -> WorkerSpec:
        argv = [
            sys.executable, "-m", "taskiq", "worker", "taskiq_app:broker",
            "--workers", "1", "--max-async-tasks", str(_MAX_ASYNC_TASKS.get(variant, 100)),
            "--log-level", "WARNING",
        ]  # fmt: skip
        return WorkerSpec(argv=argv)

    async def delayed_pending(self) -> int | None:
        return None


if __name__ == "__main__":
    main(TaskiqAdapter())
