"""One round trip for a burst of like calls: while one is under way, the calls made meanwhile
wait and go together in the next (a script reserving several slots, a pipeline of scripts).
Between 256 handlers asking at once, that is a few round trips instead of 256: each round trip
costs a consumer ~100 us of redis-py and event-loop CPU, more than the rest of a message."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class Coalesce(Generic[A, R]):
    """``await coalesce(arg)``: ``run_many(args)`` returns one result per argument, in order.

    The first caller of a burst runs its own call, then everyone's who asked meanwhile, round
    after round, until nobody waits. An error of a round reaches that round's callers (an error
    of the first caller's own call, or its cancellation, every caller still waiting)."""

    def __init__(self, run_many: Callable[[list[A]], Awaitable[list[R]]]) -> None:
        self._run_many = run_many
        self._asking: list[tuple[A, asyncio.Future[R]]] | None = None

    async def __call__(self, arg: A) -> R:
        if self._asking is not None:  # a round is under way: join the next one
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._asking.append((arg, future))
            return await future
        asking: list[tuple[A, asyncio.Future[R]]] = []
        self._asking = asking
        batch: list[tuple[A, asyncio.Future[R]]] = []
        try:
            mine = (await self._run_many([arg]))[0]
            while asking:
                batch, asking[:] = list(asking), []
                try:
                    results = await self._run_many([a for a, _ in batch])
                except Exception as exc:  # that round's callers get it; ours stands
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
            return mine
        except BaseException as exc:  # our own call failed, or we are cancelled
            for _, future in [*batch, *asking]:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            raise
        finally:
            self._asking = None
