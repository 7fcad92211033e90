"""Hostile messages on the queue: pickle and YAML are never deserialized, oversized messages are
refused on both sides, and a task name never imports or calls anything by that name."""

from __future__ import annotations

import base64
import os
import pickle
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, FailedJob, HandlerRegistry
from earnorm._errors import EventValidationError, MessageDecodeError
from earnorm.events._wire.decode import decode
from earnorm.events._wire.encode import encode_event
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


class _RunsCommandWhenUnpickled:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


def _envelope(queue: str, task: str, args: list[Any]) -> dict[str, Any]:
    """A valid Celery message for ``task(*args)``, as a Celery producer sends it (none of
    EarnORM's own event headers), as a dict to tamper with."""
    raw = encode_event(Event(name="fault.fine", data={}), queue)
    envelope: dict[str, Any] = orjson.loads(raw)
    envelope["headers"] = {k: v for k, v in envelope["headers"].items()
                           if not k.startswith("earnorm_")}
    envelope["headers"]["task"] = task
    body = [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    envelope["body"] = base64.b64encode(orjson.dumps(body)).decode()
    return envelope


async def _failed_jobs(bus: EventBus, count: int) -> list[FailedJob]:
    await wait_until(
        lambda: _has(bus, count), 10, message=f"{count} message(s) in the failed store"
    )
    return await bus.get_failed_jobs()


async def _has(bus: EventBus, count: int) -> bool:
    return len(await bus.get_failed_jobs()) >= count


def _ran_command(marker: Path) -> bool:
    return marker.exists()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A file that exists only if a hostile message made us run a command."""
    return tmp_path / "pwned"


@pytest.fixture
def ran() -> list[str]:
    return []


@pytest.fixture
def registry(ran: list[str]) -> HandlerRegistry:
    registry = HandlerRegistry()

    async def on_fine(event: Event) -> None:
        ran.append(event.id)

    registry.register("fault.fine", on_fine)
    return registry


@pytest.mark.parametrize(
    ("content_type", "payload"),
    [
        ("application/x-python-serialize", "pickle"),
        ("application/x-yaml", b"!!python/object/apply:os.system [touch {marker}]"),
        ("application/yaml", b"!!python/object/apply:os.system [touch {marker}]"),
    ],
)
async def test_pickle_and_yaml_go_to_the_failed_store_never_deserialized(
    bus: EventBus, redis: Redis, queue_name: str, registry: HandlerRegistry, ran: list[str],
    marker: Path, content_type: str, payload: bytes | str,
) -> None:
    if payload == "pickle":
        body = pickle.dumps(_RunsCommandWhenUnpickled(f"touch {marker}"))
    else:
        assert isinstance(payload, bytes)
        body = payload.replace(b"{marker}", str(marker).encode())
    envelope = _envelope(queue_name, "fault.fine", [])  # a registered name: only the body lies
    envelope["content-type"] = content_type
    envelope["body"] = base64.b64encode(body).decode()
    async with Consumer(bus=bus, registry=registry):
        await redis.lpush(queue_name, orjson.dumps(envelope))
        [job] = await _failed_jobs(bus, 1)
    assert job["reason"] == "undecodable"
    assert content_type in job["detail"] and "never deserialized" in job["detail"]
    assert job["envelope"], "the raw message is kept for inspection"
    assert not _ran_command(marker) and ran == []


async def test_oversized_message_is_refused_on_publish(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    bus = await EventBus.connect(redis_url, queue_name=queue_name, max_message_bytes=4096)
    with pytest.raises(EventValidationError, match="max_message_bytes"):
        await bus.publish(Event(name="fault.fine", data={"blob": "x" * 5000}))
    with pytest.raises(EventValidationError, match="max_message_bytes"):
        await bus.publish_batch([Event(name="fault.fine"), Event(name="fault.fine",
                                                                  data={"blob": "x" * 5000})])
    assert await redis.llen(queue_name) == 0, "nothing written, not even the small one"
    await bus.close()


async def test_oversized_message_is_refused_on_consume(
    redis_url: str, queue_name: str, redis: Redis, registry: HandlerRegistry, ran: list[str]
) -> None:
    roomy = await EventBus.connect(redis_url, queue_name=queue_name)  # default limit: 16 MiB
    strict = await EventBus.connect(redis_url, queue_name=queue_name, max_message_bytes=4096)
    async with Consumer(bus=strict, registry=registry):
        big = await roomy.publish(Event(name="fault.fine", data={"blob": "x" * 5000}))
        small = await roomy.publish(Event(name="fault.fine"))
        [job] = await _failed_jobs(strict, 1)
        await wait_until(lambda: ran == [small], 10, message="the small one runs")
    # Diverted inside Redis: the record says what it was, the message is kept aside.
    assert job["job_id"] == big and job["name"] == "fault.fine"
    assert job["reason"] == "too_large" and "exceeds max_message_bytes (4096)" in job["detail"]
    assert job.get("size", 0) > 5000 and len(job.get("sha1", "")) == 40
    assert "envelope" not in job and job["last_failed_at"]
    await roomy.close()
    await strict.close()


@pytest.mark.parametrize(
    ("task", "args"),
    [
        ("os.system", ["touch {marker}"]),
        ("subprocess.call", [["touch", "{marker}"]]),
        ("builtins.exec", ["open('{marker}', 'w')"]),
        ("earnorm.events._tools.embedded.start_local_redis", []),
    ],
)
async def test_a_task_name_never_imports_or_calls_anything_by_name(
    bus: EventBus, redis: Redis, queue_name: str, registry: HandlerRegistry, ran: list[str],
    marker: Path, task: str, args: list[Any],
) -> None:
    filled = orjson.loads(orjson.dumps(args).replace(b"{marker}", str(marker).encode()))
    envelope = _envelope(queue_name, task, filled)
    async with Consumer(bus=bus, registry=registry):
        await redis.lpush(queue_name, orjson.dumps(envelope))
        [job] = await _failed_jobs(bus, 1)
    assert job["reason"] == "no_handler" and task in job["detail"]
    assert not _ran_command(marker) and ran == []


def test_compressed_body_inflating_past_the_limit_is_refused() -> None:
    envelope = _envelope("q", "fault.fine", [])
    inflated = b'[[{"pad":"' + b"a" * 8_000_000 + b'"}],{},{}]'
    envelope["body"] = base64.b64encode(zlib.compress(inflated, 9)).decode()
    envelope["headers"]["compression"] = "application/x-gzip"
    raw = orjson.dumps(envelope)
    assert len(raw) < 64 * 1024
    with pytest.raises(MessageDecodeError, match="limit"):
        decode(raw, 1 << 20)
