"""``Coalesce``: a burst of calls made while one is under way goes in one more round, each
caller gets its own result in order, and an error reaches every caller of its round."""

from __future__ import annotations

import asyncio

import pytest

from earnorm.events.consumer._coalesce import Coalesce

pytestmark = pytest.mark.anyio


async def test_a_burst_of_100_calls_takes_two_rounds_and_each_gets_its_own_result() -> None:
    rounds: list[list[int]] = []

    async def double_all(args: list[int]) -> list[int]:
        rounds.append(args)
        await asyncio.sleep(0.01)  # a round trip
        return [a * 2 for a in args]

    call = Coalesce(double_all)
    results = await asyncio.gather(*(call(n) for n in range(100)))
    assert results == [n * 2 for n in range(100)]
    assert rounds == [[0], list(range(1, 100))]
    assert await call(7) == 14 and rounds[-1] == [7], "the next burst starts afresh"


async def test_an_error_reaches_every_caller_of_its_round_and_the_next_burst_works() -> None:
    fail = True

    async def flaky(args: list[int]) -> list[int]:
        await asyncio.sleep(0.01)
        if fail and len(args) > 1:
            raise ConnectionError("lost")
        return args

    call = Coalesce(flaky)
    results = await asyncio.gather(*(call(n) for n in range(5)), return_exceptions=True)
    assert results[0] == 0
    assert all(isinstance(r, ConnectionError) for r in results[1:])
    fail = False
    assert await asyncio.gather(*(call(n) for n in range(3))) == [0, 1, 2]
