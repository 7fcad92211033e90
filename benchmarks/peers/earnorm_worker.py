"""The EarnORM worker process: one ``Consumer`` embedded in a tiny asyncio program.

Runs in the project's own venv; stops on SIGTERM/SIGINT by leaving the ``async with`` block.
Usage: ``python earnorm_worker.py CONCURRENCY|default`` with ``BENCH_REDIS_URL`` set.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

# The repo root (earnorm/), or the tree of the baseline it is compared with (run.py --baseline).
sys.path.insert(0, os.environ.get("EARNORM_TREE") or str(Path(__file__).resolve().parents[2]))

from tracker import TRACKER

from earnorm import Consumer, HandlerRegistry


async def noop(event: Any) -> None:
    if TRACKER.begin(event.data):
        TRACKER.end()


async def io(event: Any) -> None:
    if TRACKER.begin(event.data):
        await asyncio.sleep(0.01)
        TRACKER.end()


async def serve(redis_url: str, concurrency: str) -> None:
    registry = HandlerRegistry()
    registry.register("bench.noop", noop)
    registry.register("bench.io", io)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    options: dict[str, Any] = {} if concurrency == "default" else {"concurrency": int(concurrency)}
    async with Consumer(redis_url=redis_url, queue_name="bench", registry=registry, **options):
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(os.environ["BENCH_REDIS_URL"], sys.argv[1]))
