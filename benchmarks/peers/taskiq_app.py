"""The taskiq broker and tasks (``taskiq worker taskiq_app:broker``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from taskiq_redis import ListQueueBroker
from tracker import TRACKER

broker = ListQueueBroker(
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"), queue_name="bench"
)


@broker.task(task_name="bench.noop")
async def noop(data: dict[str, Any]) -> None:
    if TRACKER.begin(data):
        TRACKER.end()


@broker.task(task_name="bench.io")
async def io(data: dict[str, Any]) -> None:
    if TRACKER.begin(data):
        await asyncio.sleep(0.01)
        TRACKER.end()
