"""The spec suite's harness: a private Redis per test (the spec's blocks all use the queue
``my_app:events``, so tests must not share a server), the session's MongoDB-wire server, the
CLI consumer running an app module made of the spec's handler blocks, and a runner for the
spec's blocks.

The blocks run as written, but for the two server addresses they name
(``mongodb://localhost:27017`` and ``redis://localhost:6379/0``), which become the test's
servers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pymongo import AsyncMongoClient

import earnorm
from earnorm import LocalRedis, start_local_redis
from tests.processes import stop
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


@dataclass
class CliConsumer:
    """``python -m earnorm.events.consumer`` as a user runs it, and the lines it printed."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def printed(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def output(self) -> str:
        return "\n".join(self.lines)


@contextmanager
def cli_consumer(app_dir: Path, app: str, redis_url: str, *args: str) -> Iterator[CliConsumer]:
    """The CLI consumer for ``--app app`` (a module in ``app_dir``) on the spec's queue."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(app_dir), str(ROOT)]),
           "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "earnorm.events.consumer", "--app", app, "--redis-uri",
         redis_url, "--queue", SPEC_QUEUE, "--heartbeat-interval", "0.2",
         "--heartbeat-timeout", "2", *args],
        cwd=app_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    consumer = CliConsumer(process)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            consumer.lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield consumer
    finally:
        stop(process, signal.SIGTERM)
        reader.join(timeout=10)
