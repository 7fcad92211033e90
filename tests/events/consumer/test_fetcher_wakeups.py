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


async def test_a_burst_reaches_every_idle_worker_when_each_handler_waits() -> None:
    """Slow handlers: each woken worker that finds more work wakes two more, so 8 messages
    reach 8 of 50 idle workers within a few loop turns, and nobody else is woken."""
    fetcher = _fetcher()
    took: list[int] = []
    release = asyncio.Event()

    async def slow_worker(n: int) -> None:
        item = await fetcher.take()
        if item is not None:
            took.append(n)
            await release.wait()  # a handler that waits: this worker takes nothing else

    tasks = [asyncio.create_task(slow_worker(n)) for n in range(50)]
    await _settle()
    fetcher._add(1, [b"m"] * 8, {})
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(took) == 8 and len(set(took)) == 8
    assert not fetcher.buffer
    assert sum(1 for w in fetcher._idle if not w.done()) == 42  # the other 42 still asleep
    release.set()
    fetcher.stop()
    await asyncio.gather(*tasks)


async def test_quick_handlers_wake_two_workers_in_vain_per_fetch_not_one_per_message() -> None:
    """A worker whose handler never waits runs the whole fetch back to back; the fan-out may
    wake two more, which find nothing (it used to wake one per message fetched)."""
    fetcher = _fetcher()
    woken: list[int] = []

    async def quick_worker(n: int) -> None:
        while await fetcher.take() is not None:
            woken.append(n)
            while fetcher.take_nowait() is not None:  # the rest, without waiting
                woken.append(n)

    tasks = [asyncio.create_task(quick_worker(n)) for n in range(50)]
    await _settle()
    waiting = list(fetcher._idle)
    fetcher._add(1, [b"m"] * 10, {})
    await _settle()
    assert len(woken) == 10 and len(set(woken)) == 1  # one worker ran all ten
    assert sum(w.done() for w in waiting) <= 3  # the seed and the two it fanned out to
    fetcher.stop()
    await asyncio.gather(*tasks)
