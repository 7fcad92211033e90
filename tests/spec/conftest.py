"""The spec suite's harness: a private Redis per test (the spec's blocks all use the queue
``my_app:events``, so tests must not share a server), the session's MongoDB-wire server, the
CLI consumer running an app module made of the spec's handler blocks, and a runner for the
spec's blocks.

The blocks run as written, but for the two server addresses they name
(``mongodb://localhost:27017`` and ``redis://localhost:6379/0``), which become the test's
servers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pymongo import AsyncMongoClient

import earnorm
from earnorm import LocalRedis, start_local_redis
from tests.processes import CliConsumer, run_cli_consumer
from tests.spec.blocks import Block

ROOT = Path(__file__).resolve().parent.parent.parent
SPEC_MONGO = "mongodb://localhost:27017"
SPEC_REDIS = "redis://localhost:6379/0"
SPEC_QUEUE = "my_app:events"


@dataclass
class Servers:
    redis_url: str
    mongo_uri: str

    def code(self, block: Block) -> str:
        """The block's code with the spec's server addresses pointing at the test's."""
        code = block.code
        for literal, actual in ((SPEC_MONGO, self.mongo_uri), (SPEC_REDIS, self.redis_url)):
            code = code.replace(f'"{literal}"', repr(actual))
        return code

    async def run(self, block: Block, namespace: dict[str, Any]) -> dict[str, Any]:
        """Run ``block`` (awaiting its top-level ``await``s) in ``namespace``; returns it."""
        moved = Block(block.line, self.code(block)).compiled()
        result = eval(moved, namespace)
        if result is not None:
            await result
        return namespace


def default_database(mongo_uri: str) -> str:
    """The database ``init(mongodb_uri=...)`` uses without ``database=``: the URI's, else
    ``earnorm``."""
    return urlsplit(mongo_uri).path.strip("/") or "earnorm"


@pytest.fixture
def spec_redis() -> Iterator[LocalRedis]:
    server = start_local_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def servers(spec_redis: LocalRedis, mongo_uri: str) -> AsyncIterator[Servers]:
    """The test's servers; the spec's databases (``earnbase``, and init()'s default for a URI
    without one) emptied first, since jongodb cannot drop a database; ``earnorm.close()``
    after."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    try:
        for database in ("earnbase", default_database(mongo_uri)):
            for collection in ("users",):
                await client[database][collection].delete_many({})
    finally:
        await client.close()
    try:
        yield Servers(spec_redis.url, mongo_uri)
    finally:
        await earnorm.close()


@contextmanager
def cli_consumer(app_dir: Path, app: str, redis_url: str, *args: str) -> Iterator[CliConsumer]:
    """The CLI consumer for ``--app app`` (a module in ``app_dir``) on the spec's queue."""
    with run_cli_consumer(app_dir, app, "--redis-uri", redis_url, "--queue", SPEC_QUEUE,
                          "--heartbeat-interval", "0.2", "--heartbeat-timeout", "2",
                          *args) as consumer:
        yield consumer
