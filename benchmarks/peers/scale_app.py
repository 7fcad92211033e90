"""Handlers for ``benchmarks/scale.py``: each process counts what it ran and when, in memory,
and writes its tally to Redis (``<queue>:bench``, one field per pid) every 0.2 s, so the runner
measures first-to-last handler time across processes without a Redis call per event."""

from __future__ import annotations

import asyncio
import os
import time

from redis.asyncio import Redis

from earnorm import Event, event_handler
from earnorm.events._broker.connect import open_redis

_QUEUE = os.environ["EARNORM_QUEUE"].split(",")[0]
_tally = {"first": 0.0, "last": 0.0, "count": 0}
_writer: list[asyncio.Task[None]] = []


async def _flush_forever(redis: Redis) -> None:
    key = f"{_QUEUE}:bench"
    while True:
        await asyncio.sleep(0.2)
        await redis.hset(key, str(os.getpid()),
                         f"{_tally['first']!r} {_tally['last']!r} {_tally['count']}")


def _ran(started: float) -> None:
    if not _tally["count"]:
        _tally["first"] = started
        _writer.append(asyncio.get_running_loop().create_task(
            _flush_forever(open_redis(os.environ["EARNORM_REDIS_URI"]))))
    _tally["count"] += 1
    _tally["last"] = time.time()


@event_handler("scale.noop")
async def noop(event: Event) -> None:
    _ran(time.time())


@event_handler("scale.cpu")
async def cpu(event: Event) -> None:
    """About 1 ms of pure Python work: what a process pool is for."""
    started = time.time()
    total = 0
    for i in range(20_000):
        total += i * i
    _ran(started)


@event_handler("scale.io")
async def io(event: Event) -> None:
    started = time.time()
    await asyncio.sleep(0.01)
    _ran(started)
