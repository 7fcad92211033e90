"""dramatiq peer (RedisBroker): publishes with ``send``/``group``, runs ``dramatiq`` (1 process)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from benchlib import main
from procs import WorkerSpec

_THREADS = {"default": 8, "tuned": 16, "io": 100}


class DramatiqAdapter:
    def __init__(self) -> None:
        self.name = "dramatiq"
        self.variants = {
            "drain": {"default": "threads 8", "tuned": "threads 16"},
            "io": {"io": "threads(100)"},
        }
        self.skips: dict[str, str] = {}
        self.batch_api = "group().run()"

    async def open(self, redis_url: str) -> None:
        os.environ["BENCH_REDIS_URL"] = redis_url
        from dramatiq_app import broker, io, noop

        self.broker = broker
        self.actors = {"bench.noop": noop, "bench.io": io}

    async def close(self) -> None:
        self.broker.close()

    async def publish(self, task: str, data: dict[str, Any], due: float | None) -> None:
        delay = None if due is None else max(0, int((due - time.time()) * 1000))
        self.actors[task].send_with_options(args=(data,), delay=delay)

    async def publish_batch(self, task: str, items: list[dict[str, Any]]) -> None:
        from dramatiq import group

        group(self.actors[task].message(data) for data in items).run()

    def worker(self, workload: str, variant: str) -> WorkerSpec:
        threads = _THREADS.get(variant, 8)
        argv = [
            sys.executable, "-m", "dramatiq", "dramatiq_app",
            "--processes", "1", "--threads", str(threads),
        ]  # fmt: skip
        return WorkerSpec(argv=argv)

    async def delayed_pending(self) -> int | None:
        return None


if __name__ == "__main__":
    main(DramatiqAdapter())
