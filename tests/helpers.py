"""Waiting on conditions with timeouts, never sleep-and-hope."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio


async def wait_until(
    predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0, interval: float = 0.01,
    message: str = "condition",
) -> None:
    """Poll ``predicate`` (sync or async) until truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await anyio.sleep(interval)
