"""The SAQ queue and worker settings (``saq saq_app.settings``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from saq import Queue
from tracker import TRACKER

queue = Queue.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"), name="bench")


async def noop(ctx: dict[str, Any], *, data: dict[str, Any]) -> None:
    if TRACKER.begin(data):
        TRACKER.end()


async def io(ctx: dict[str, Any], *, data: dict[str, Any]) -> None:
    if TRACKER.begin(data):
        await asyncio.sleep(0.01)
        TRACKER.end()


settings = {
    "queue": queue,
    "functions": [("bench.noop", noop), ("bench.io", io)],
    "concurrency": int(os.environ.get("BENCH_CONCURRENCY", "10")),
}
