"""Calling handlers, with their timeouts and time limits. Stateless: no Redis, no consumer."""

from __future__ import annotations

import logging
from typing import Any

import anyio

from earnorm._errors import HandlerTimeout, TimeLimitExceeded
from earnorm.events._broker.errors import RETRYABLE_ERRORS
from earnorm.events._broker.idempotency import DoneMarks
from earnorm.events._handlers import Handler
from earnorm.events._wire.event import Event
from earnorm.events._wire.failures import HandlerFailure
from earnorm.events.consumer._decide import Failures
from earnorm.events.consumer._limits import with_soft_limit

log = logging.getLogger("earnorm.consumer")

# A message's time limits: (soft, hard) seconds, None where not set.
Limits = tuple[float | None, float | None]
NO_LIMITS: Limits = (None, None)


def message_limits(header: Any) -> Limits:
    """(soft, hard) from Celery's ``timelimit`` header, which
    ``apply_async(soft_time_limit=, time_limit=)`` writes as ``[time_limit, soft_time_limit]``
    (the hard one first: celery/app/amqp.py).

    >>> message_limits([10, 5]), message_limits([None, None]), message_limits("bad")
    ((5.0, 10.0), (None, None), (None, None))
    """
    if not isinstance(header, list) or len(header) != 2:
        return NO_LIMITS
    hard, soft = (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                  and v > 0 else None for v in header)
    return NO_LIMITS if soft is None and hard is None else (soft, hard)


# What the template and Celery write when no time limit is set: read without a call.
UNSET_TIMELIMIT = [None, None]


def plain(handler: Handler) -> bool:
    """Whether ``handler`` runs as a bare call: no timeout, no time limit, no idempotency mark
    (a consumer calls such a lone handler directly, without ``run_handlers``' loop)."""
    return not handler.idempotent and not _limited(handler, NO_LIMITS)


def failed(handler: Handler, event: Event, exc: Exception) -> tuple[Handler, HandlerFailure]:
    """The failure of ``handler`` on ``event``, logged."""
    log.warning("handler %s failed on %s %s: %r", handler.name, event.name, event.id, exc)
    return handler, HandlerFailure(handler.name, exc)


def _limited(handler: Handler, limits: Limits) -> bool:
    """Whether a call of ``handler`` needs ``_bounded`` (most do not: the hot path)."""
    return not (limits is NO_LIMITS and handler.timeout is None
                and handler.soft_time_limit is None and handler.time_limit is None)


async def _bounded(handler: Handler, argument: Any, limits: Limits) -> Any:
    """The handler's return value under its time limits (the message's own win) or its
    timeout: the soft limit raises SoftTimeLimitExceeded inside it; the hard limit cancels it
    (TimeLimitExceeded), or else the timeout does (HandlerTimeout)."""
    soft = limits[0] or handler.soft_time_limit
    hard = limits[1] or handler.time_limit
    call: Any = handler.func(argument)  # a coroutine: handlers are async def (checked)
    if soft is not None:
        call = with_soft_limit(call, soft, handler.name)
    deadline = hard if hard is not None else handler.timeout
    if deadline is None:
        return await call
    try:
        with anyio.fail_after(deadline):
            return await call
    except TimeoutError as exc:
        if isinstance(exc, HandlerTimeout):
            raise
        if hard is not None:
            raise TimeLimitExceeded(
                f"handler {handler.name} ran past its time limit of {hard:g}s") from exc
        raise HandlerTimeout(
            f"handler {handler.name} ran longer than its timeout of {handler.timeout}s"
        ) from exc


async def call_handler(handler: Handler, argument: Any) -> BaseException | None:
    """Run one handler (an event, or a list of them for a batch handler), with its timeout
    and time limits. Returns the error, or None."""
    try:
        if not _limited(handler, NO_LIMITS):
            await handler.func(argument)
        else:
            await _bounded(handler, argument, NO_LIMITS)
    except Exception as exc:
        return exc
    return None


async def run_handlers(handlers: tuple[Handler, ...], event: Event,
                       done: DoneMarks | None = None,
                       limits: Limits = NO_LIMITS) -> tuple[Failures, Any]:
    """Run ``handlers`` on ``event`` one after another. Returns the ones that failed, and the
    result: the first successful handler's return value (a Celery task's result). An
    ``idempotent`` handler that already handled this event id (``done``) is skipped.
    ``limits``: the message's own time limits (Celery's ``timelimit`` header)."""
    failures: Failures = []
    result: Any = None
    have_result = False
    for handler in handlers:
        try:
            if handler.idempotent and done is not None and await done.seen(handler.name, event.id):
                log.info("handler %s already handled %s %s: skipped", handler.name,
                         event.name, event.id)
                continue
            if not _limited(handler, limits):  # the common case, without the extra await
                value = await handler.func(event)
            else:
                value = await _bounded(handler, event, limits)
        except Exception as exc:
            failures.append(failed(handler, event, exc))
            continue
        if handler.idempotent and done is not None:
            try:
                await done.mark(handler.name, event.id, handler.idempotency_ttl)
            except RETRYABLE_ERRORS as exc:  # handled; only a later duplicate would re-run it
                log.warning("handler %s handled %s but its idempotency mark was not written "
                            "(%s)", handler.name, event.id, exc)
        if not have_result:
            result, have_result = value, True
    return failures, result
