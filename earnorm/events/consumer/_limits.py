"""Soft time limits for async handlers: ``SoftTimeLimitExceeded`` raised inside the coroutine,
at whatever it awaits, when the limit passes (Celery can only do this in prefork children).

The handler's coroutine is driven here, step by step, in the calling task: each thing it
awaits is passed on to the event loop as is. At the limit the task is cancelled; the
cancellation arrives here, is taken back (``Task.uncancel``) and the handler gets
``SoftTimeLimitExceeded`` at its await instead. Any other cancellation (the hard limit,
shutdown) reaches the handler unchanged. Costs nothing for a handler without a soft limit: it
is not driven here at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

from earnorm._errors import SoftTimeLimitExceeded


class _Pass:
    """An awaitable that hands what the handler yielded (a future, or None) to the loop."""

    __slots__ = ("yielded",)

    def __init__(self, yielded: Any) -> None:
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self.yielded)


async def with_soft_limit(coro: Coroutine[Any, Any, Any], seconds: float, name: str) -> Any:
    """Await ``coro``; if it is still running after ``seconds``, raise
    ``SoftTimeLimitExceeded`` inside it (once)."""
    task = asyncio.current_task()
    assert task is not None
    fired = delivered = False

    def fire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, fire)
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                yielded = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                value = await _Pass(yielded)
            except asyncio.CancelledError as cancelled:
                if fired and not delivered:
                    delivered = True
                    task.uncancel()
                    error = SoftTimeLimitExceeded(
                        f"handler {name} passed its soft time limit of {seconds:g}s")
                else:
                    error = cancelled
            except BaseException as exc:  # what the loop threw in: the handler's to handle
                error = exc
    finally:
        timer.cancel()
        coro.close()
