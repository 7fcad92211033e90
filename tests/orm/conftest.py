"""ORM harness: a MongoDB-wire server for the session and a fresh database per test.

The server is jongodb (see ``tests/orm/jongodb.py``), installed and checksum-verified on first
use; ``MONGODB_URI`` points the same tests at a real mongod instead.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from pymongo.errors import PyMongoError
from redis.asyncio import Redis

import earnorm
from earnorm._environment import Environment, current_environment


@pytest.fixture
def database_name() -> str:
    return f"earnorm_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def orm(
    mongo_uri: str, database_name: str, redis_url: str, queue_name: str, redis: Redis
) -> AsyncIterator[Environment]:
    """``earnorm.init()`` on a fresh database and this test's queue; ``close()`` after."""
    await earnorm.init(
        mongo_uri=mongo_uri, database=database_name, redis_uri=redis_url,
        event_config={"queue_name": queue_name},
    )
    env = current_environment()
    try:
        yield env
    finally:
        if os.environ.get("MONGODB_URI") and env.client is not None:
            # jongodb has no dropDatabase; its databases go away with the process.
            with contextlib.suppress(PyMongoError):
                await env.client.drop_database(database_name)
        await earnorm.close()
