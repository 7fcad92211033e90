"""The ORM guide (docs/models.md) runs as written: its python blocks, in order, in one
namespace, with top-level ``await`` (as in ``python -m asyncio``), against this session's
servers."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import earnorm
from earnorm import HandlerRegistry
from earnorm._config import EventConfig
from earnorm.events import _handlers as handlers

pytestmark = pytest.mark.anyio

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


async def test_models_guide_runs_as_written(
    mongo_uri: str, database_name: str, redis_url: str, queue_name: str, redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The guide's handlers go to the default registry; keep them out of the real one.
    monkeypatch.setattr(handlers, "default_registry", HandlerRegistry())
    # No background relay while the guide runs: jongodb has hung (a CI run sat > 8 min here,
    # the server unresponsive) when a relay's poll met the guide's open transaction. The
    # committed outbox entries are relayed below, once the guide is done.
    monkeypatch.setattr(EventConfig, "outbox_relay", False)
    namespace: dict[str, Any] = {"__name__": "docs_models"}
    output = io.StringIO()
    try:
        for block in python_blocks():
            source = (
                block.replace("mongodb://localhost:27017", mongo_uri)
                .replace('database="shop"', f'database="{database_name}"')
                .replace("redis://localhost:6379/0", redis_url)
                .replace('"shop:events"', f'"{queue_name}"')
            )
            code = compile(source, str(DOC), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                           dont_inherit=True)
            with contextlib.redirect_stdout(output):
                result = eval(code, namespace)  # our own documentation, run as written
                if result is not None:
                    await result
    finally:
        await earnorm.close()
    await _relay_committed(mongo_uri, database_name, redis_url, queue_name)
    printed = output.getvalue()
    assert "Product.price: expected float, got str 'cheap'" in printed
    assert "['pad', 'pen']" in printed
    assert "Email already exists" in printed
    assert "1\nTrue\n" in printed  # the rolled-back invoice, the dropped duplicate publish
    assert len(handlers.default_registry) == 2
    # member.before_create, .created, .login; two invoice.created (committed), one invoice.sent
    assert await redis.llen(queue_name) == 6


async def _relay_committed(mongo_uri: str, database: str, redis_url: str, queue: str) -> None:
    """What the guide's init() relay would have published: its committed outbox entries."""
    from pymongo import AsyncMongoClient

    from earnorm import EventBus
    from earnorm._outbox import OutboxRelay

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    bus = await EventBus.connect(redis_url, queue_name=queue)
    try:
        relay = OutboxRelay(bus, client[database])
        while await relay.relay_once():
            pass
    finally:
        await bus.close()
        await client.close()
