"""Running a consumer (or a group of them) in the background of an ``async with`` block."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self


class RunsInBackground:
    """``async with x:`` runs ``x.run()`` as a task, returns once it has started (or raises its
    startup error), and on exit asks it to ``stop()`` and waits for it to finish."""

    _started: asyncio.Event
    _background: asyncio.Task[None] | None

    async def run(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    async def wait_started(self) -> None:
        await self._started.wait()

    async def __aenter__(self) -> Self:
        self._background = asyncio.get_running_loop().create_task(self.run())
        started = asyncio.ensure_future(self._started.wait())
        done, _ = await asyncio.wait(
            {self._background, started}, return_when=asyncio.FIRST_COMPLETED
        )
        if self._background in done:
            started.cancel()
            self._background.result()  # raises the startup error
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._background is not None:
            await self._background
