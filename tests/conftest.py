"""Shared test harness: a private, real Redis server on a free loopback port.

``REDIS_URL`` points the suite at an existing server instead. Never fakeredis, never mocks.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from earnorm import EventBus, LocalRedis, start_local_redis


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis | None]:
    if os.environ.get("REDIS_URL"):
        yield None
        return
    server = start_local_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """The MongoDB-wire server for ORM tests: jongodb (``tests/orm/jongodb.py``), started on
    first use, or the real mongod ``MONGODB_URI`` names."""
    given = os.environ.get("MONGODB_URI")
    if given:
        yield given
        return
    from tests.orm import jongodb

    server = jongodb.start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: LocalRedis | None) -> str:
    return os.environ.get("REDIS_URL") or (redis_server.url if redis_server else "")


@pytest.fixture
def queue_name() -> str:
    """A fresh queue per test, so tests never see each other's messages."""
    return f"test:{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis(redis_url: str, queue_name: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{queue_name}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
def bus_config() -> dict[str, Any]:
    """The ``bus`` fixture's settings beside its queue; a test module overrides this fixture."""
    return {}


@pytest.fixture
async def bus(
    redis_url: str, queue_name: str, redis: Redis, bus_config: dict[str, Any]
) -> AsyncIterator[EventBus]:
    """A bus on the test's queue, with ``bus_config`` (the default config unless overridden)."""
    bus = await EventBus.connect(redis_url, {"queue_name": queue_name, **bus_config})
    yield bus
    await bus.close()
