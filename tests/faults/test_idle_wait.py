"""The consumer's idle wait sends its BLMOVE behind ``CLIENT REPLY SKIP`` and reads only the
fetch script's reply. Messages that wake it run for any ACL: one that refuses ``CLIENT REPLY``
(the BLMOVE's reply is then read whole, and a warning says so once) and one that refuses the
probe's ``ECHO`` (the skip is still used). A reply stream one reply out of step would hand the
fetch the BLMOVE's reply, or wait for a reply that never comes: these messages would not run."""

from __future__ import annotations

import logging
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

PASSWORD = "idle-wait-pw"
REFUSAL = "refuses CLIENT REPLY SKIP"


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{PASSWORD}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


async def blocked_in_blmove(redis: Redis, user: str) -> bool:
    return any(c.get("user") == user and c.get("cmd") == "blmove"
               for c in await redis.client_list())


@pytest.mark.parametrize(("refused", "warned"), [
    (None, False), ("-client|reply", True), ("-echo", False),
])
async def test_messages_that_wake_an_idle_wait_run_whatever_the_acl_refuses(
    redis_url: str, queue_name: str, redis: Redis, caplog: pytest.LogCaptureFixture,
    refused: str | None, warned: bool,
) -> None:
    user = f"idle-{uuid.uuid4().hex[:8]}"
    rules = ["on", f">{PASSWORD}", "~*", "&*", "+@all", *([refused] if refused else [])]
    await redis.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", user, *rules)
    received: list[int] = []

    async def on_woke(event: Event) -> None:
        received.append(event.data["n"])

    registry = HandlerRegistry()
    registry.register("idle.woke", on_woke)
    caplog.set_level(logging.WARNING, logger="earnorm.consumer")
    bus = await EventBus.connect(as_user(redis_url, user), {"queue_name": queue_name})
    try:
        async with Consumer(bus=bus, registry=registry, concurrency=2, poll_interval=5.0):
            for n in range(3):  # each one published while the consumer waits in its BLMOVE
                await wait_until(lambda: blocked_in_blmove(redis, user), 10,
                                 message="the consumer waits in BLMOVE")
                await bus.publish(Event(name="idle.woke", data={"n": n, "pad": "x" * 300_000}))
                await wait_until(lambda n=n: len(received) == n + 1, 10,  # type: ignore[misc]
                                 message=f"event {n} handled")
    finally:
        await bus.close()
        await redis.acl_deluser(user)
    assert received == [0, 1, 2]
    said = [r for r in caplog.records if REFUSAL in r.getMessage()]
    assert len(said) == (1 if warned else 0), [r.getMessage() for r in said]
