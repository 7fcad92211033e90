"""An app for consumer subprocesses in tests: counts each handled event id in Redis.

``HINCRBY <queue>:handled <event id> 1`` per call, so a test can tell lost from duplicated.
``EARNORM_TEST_HANDLER_SLEEP`` (seconds) makes each handler await that long.
"""

from __future__ import annotations

import os

import anyio
from redis.asyncio import Redis

from earnorm import Event, event_handler
from earnorm.events._broker.connect import open_redis

_QUEUE = os.environ["EARNORM_QUEUE"]
_SLEEP = float(os.environ.get("EARNORM_TEST_HANDLER_SLEEP", "0"))
_clients: list[Redis] = []


def _redis() -> Redis:
    if not _clients:
        _clients.append(open_redis(os.environ["EARNORM_REDIS_URI"]))  # a cluster URL too
    return _clients[0]


@event_handler("test.counted")
async def count(event: Event) -> None:
    if _SLEEP:
        await anyio.sleep(_SLEEP)
    await _redis().hincrby(f"{_QUEUE}:handled", event.id, 1)
