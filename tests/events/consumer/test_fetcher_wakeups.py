"""Handing fetched messages to idle workers: one wake-up per message, none lost."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from earnorm.events.consumer._fetcher import Fetcher, Item
from earnorm.events.consumer._resilient import RedisHealth

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _fetcher() -> Fetcher:
    return Fetcher(cast(Any, None), "c-1", prefetch=10, poll_interval=1.0, max_bytes=1 << 20,
                   health=RedisHealth())


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_one_message_wakes_one_idle_worker_of_fifty() -> None:
    fetcher = _fetcher()
    got: list[Item | None] = []

    async def worker() -> None:
        got.append(await fetcher.take())

    tasks = [asyncio.create_task(worker()) for _ in range(50)]
    await _settle()
    waiting = list(fetcher._idle)
    assert len(waiting) == 50
    fetcher._add(1, [b"m"], {})
    await _settle()
    assert [item[:2] for item in got if item] == [(1, b"m")]
    # The other 49 were never woken: the same waits, still pending.
    assert [w for w in fetcher._idle if not w.done()] == waiting[1:]
    fetcher.stop()
    await asyncio.gather(*tasks)
    assert got.count(None) == 49


async def test_a_woken_worker_cancelled_before_it_runs_passes_the_message_on() -> None:
    fetcher = _fetcher()
    got: list[Item | None] = []

    async def worker() -> None:
        got.append(await fetcher.take())

    first, second = asyncio.create_task(worker()), asyncio.create_task(worker())
    await _settle()
    fetcher._add(1, [b"m"], {})  # wakes `first`, which has not run yet
    first.cancel()
    await _settle()
    assert first.cancelled()
    assert [item[:2] for item in got if item] == [(1, b"m")]
    fetcher.stop()
    await second
