"""Celery's time limits for async handlers: at the soft limit ``SoftTimeLimitExceeded`` is
raised inside the handler (which may catch it and finish), at the hard limit the handler is
cancelled and fails with ``TimeLimitExceeded``. Per handler (``soft_time_limit=``,
``time_limit=``) or per message (Celery's ``timelimit`` header, which wins). No Redis here."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from earnorm import Event, HandlerRegistry, SoftTimeLimitExceeded, TimeLimitExceeded
from earnorm.events.consumer._calls import message_limits, run_handlers

pytestmark = pytest.mark.anyio


def _handler(registry: HandlerRegistry, func: object, **options: object) -> object:
    return registry.register("limits.x", func, **options)  # type: ignore[arg-type]


async def test_the_soft_limit_is_raised_inside_the_handler_which_may_finish() -> None:
    seen: list[str] = []
    registry = HandlerRegistry()

    async def slow(event: Event) -> str:
        try:
            await asyncio.sleep(5)
        except SoftTimeLimitExceeded:
            seen.append("soft")
            await asyncio.sleep(0.01)  # it may still await: cleaning up
            return "cleaned up"
        return "finished"
    _handler(registry, slow, soft_time_limit=0.05)
    started = anyio.current_time()
    failures, result = await run_handlers(registry.handlers_for("limits.x"),
                                          Event(name="limits.x"))
    assert (failures, result, seen) == ([], "cleaned up", ["soft"])
    assert anyio.current_time() - started < 1
    await asyncio.sleep(0.02)  # no cancellation is left pending on this task
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_the_hard_limit_cancels_and_fails_with_time_limit_exceeded() -> None:
    registry = HandlerRegistry()

    async def stubborn(event: Event) -> None:
        try:
            await asyncio.sleep(5)
        except SoftTimeLimitExceeded:
            await asyncio.sleep(5)  # ignores the soft limit
    _handler(registry, stubborn, soft_time_limit=0.05, time_limit=0.2)
    [(_, failure)], _ = await run_handlers(registry.handlers_for("limits.x"),
                                                 Event(name="limits.x"))
    assert isinstance(failure.error, TimeLimitExceeded)
    assert "time limit of 0.2s" in str(failure.error)


async def test_the_messages_own_timelimit_header_wins_over_the_handlers() -> None:
    registry = HandlerRegistry()

    async def slow(event: Event) -> str:
        try:
            await asyncio.sleep(5)
        except SoftTimeLimitExceeded:
            return "soft from the message"
        return "finished"
    _handler(registry, slow, soft_time_limit=30)
    failures, result = await run_handlers(registry.handlers_for("limits.x"),
                                          Event(name="limits.x"),
                                          limits=message_limits([1, 0.05]))  # hard, soft
    assert (failures, result) == ([], "soft from the message")


async def test_an_outer_cancellation_still_reaches_a_soft_limited_handler() -> None:
    registry = HandlerRegistry()
    cancelled: list[bool] = []

    async def waits(event: Event) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
    _handler(registry, waits, soft_time_limit=10)
    with anyio.move_on_after(0.05):
        await run_handlers(registry.handlers_for("limits.x"), Event(name="limits.x"))
    assert cancelled == [True]


def test_limits_must_be_positive_numbers() -> None:
    from earnorm import ConfigError

    async def noop(event: Event) -> None: ...
    for bad in (0, -1, "5", True):
        with pytest.raises(ConfigError, match="soft_time_limit must be a positive number"):
            HandlerRegistry().register("a.b", noop, soft_time_limit=bad)  # type: ignore[arg-type]


async def test_a_timeout_still_bounds_a_handler_that_has_only_a_soft_limit() -> None:
    from earnorm._errors import HandlerTimeout

    registry = HandlerRegistry()

    async def ignores_soft(event: Event) -> None:
        try:
            await asyncio.sleep(5)
        except SoftTimeLimitExceeded:
            await asyncio.sleep(5)
    _handler(registry, ignores_soft, soft_time_limit=0.05, timeout=0.2)
    [(_, failure)], _ = await run_handlers(registry.handlers_for("limits.x"),
                                           Event(name="limits.x"))
    assert type(failure.error) is HandlerTimeout
