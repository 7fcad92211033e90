"""Calling handlers, with their timeouts. Stateless: no Redis, no consumer."""

from __future__ import annotations

import logging
from typing import Any

import anyio

from earnorm._errors import HandlerTimeout
from earnorm.events._event import Event
from earnorm.events._failures import HandlerFailure
from earnorm.events._handlers import Handler
from earnorm.events.consumer._decide import Failures

log = logging.getLogger("earnorm.consumer")


async def call_handler(handler: Handler, argument: Any) -> BaseException | None:
    """Run one handler (an event, or a list of them for a batch handler), with its timeout:
    one that overruns is cancelled and counts as failed with ``HandlerTimeout``.
    Returns the error, or None."""
    try:
        if handler.timeout is None:
            await handler.func(argument)
        else:
            with anyio.fail_after(handler.timeout):
                await handler.func(argument)
    except TimeoutError as exc:
        if handler.timeout is None or isinstance(exc, HandlerTimeout):
            return exc
        timeout = HandlerTimeout(
            f"handler {handler.name} ran longer than its timeout of {handler.timeout}s"
        )
        timeout.__cause__ = exc
        return timeout
    except Exception as exc:
        return exc
    return None


async def run_handlers(handlers: tuple[Handler, ...], event: Event) -> Failures:
    """Run ``handlers`` on ``event`` one after another; return the ones that failed."""
    failures: Failures = []
    for handler in handlers:
        if handler.timeout is None:  # the common case, without call_handler's extra await
            try:
                await handler.func(event)
                continue
            except Exception as exc:
                error: BaseException | None = exc
        else:
            error = await call_handler(handler, event)
        if error is not None:
            log.warning("handler %s failed on %s %s: %r", handler.name, event.name, event.id, error)
            failures.append((handler, HandlerFailure(handler.name, error)))
    return failures
