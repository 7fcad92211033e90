"""The consumer's idle wait sends its BLMOVE behind ``CLIENT REPLY SKIP`` and reads only the
fetch script's reply. Messages that wake it run for any ACL: one that refuses ``CLIENT REPLY``
(the BLMOVE's reply is then read whole, and a warning says so once) and one that refuses the
probe's ``ECHO`` (the skip is still used). A reply stream one reply out of step would hand the
fetch the BLMOVE's reply, or wait for a reply that never comes: these messages would not run."""

from __future__ import annotations

import logging
import uuid
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from tests.helpers import wait_until, waits_in_blmove

pytestmark = pytest.mark.anyio

PASSWORD = "idle-wait-pw"
REFUSAL = "refuses CLIENT REPLY SKIP"


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{PASSWORD}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


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
                await wait_until(lambda: waits_in_blmove(redis, user), 10,
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


async def test_a_poll_interval_longer_than_the_read_timeout_is_waited_out_quietly(
    redis_url: str, queue_name: str, redis: Redis, caplog: pytest.LogCaptureFixture,
) -> None:
    """The fetch script's reply comes once the BLMOVE returns, up to ``poll_interval`` later:
    that read allows the poll interval on top of the socket timeout, so an idle consumer
    whose poll interval (2.5 s) is longer than its read timeout (~1.1 s here) does not take
    every idle wait for a lost reply."""
    received: list[Event] = []

    async def on_woke(event: Event) -> None:
        received.append(event)

    registry = HandlerRegistry()
    registry.register("idle.woke", on_woke)
    caplog.set_level(logging.WARNING, logger="earnorm.consumer")
    # max_message_bytes 64 KiB: the 0.3 s read timeout is lifted to ~1.1 s, not ~11 s
    async with Consumer(f"{redis_url}?socket_timeout=0.3", queue_name=queue_name,
                        registry=registry, poll_interval=2.5,
                        config={"max_message_bytes": 64 * 1024}) as consumer:
        await anyio.sleep(6)  # idle: two full idle waits, each longer than the read timeout
        await consumer.bus.publish(Event(name="idle.woke"))
        await wait_until(lambda: received, 10, message="the event handled")
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "fetch made no progress" in m], said
