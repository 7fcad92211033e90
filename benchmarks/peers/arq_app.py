"""The arq worker settings (``arq arq_app.WorkerSettings``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

from arq.connections import RedisSettings
from arq.worker import Function, func
from tracker import TRACKER

REDIS_SETTINGS = RedisSettings.from_dsn(
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
)


async def noop(ctx: dict[str, Any], data: dict[str, Any]) -> None:
    if TRACKER.begin(data):
        TRACKER.end()


async def io(ctx: dict[str, Any], data: dict[str, Any]) -> None:
    if TRACKER.begin(data):
        await asyncio.sleep(0.01)
        TRACKER.end()


class WorkerSettings:
    functions: ClassVar[list[Function]] = [func(noop, name="bench.noop"), func(io, name="bench.io")]
    redis_settings = REDIS_SETTINGS
    queue_name = "bench"
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "10"))
