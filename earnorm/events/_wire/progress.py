"""What ``Event.progress()`` checks and where it sends a report: the reporter of the consumer
running the handler, found in a context variable that the consumer sets once for its tasks
(nothing is set or read per message; a handler that never reports costs nothing)."""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Any, Protocol

from earnorm._errors import EventValidationError

# Celery's own states: a report may not claim one (a client would take the job as finished,
# retried or not started).
CELERY_STATES = frozenset({"PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY",
                           "REVOKED", "REJECTED", "IGNORED"})
_STATE_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


class ProgressSink(Protocol):
    async def report(self, job_id: str, state: str, info: dict[str, Any]) -> None: ...


# Set by a consumer for the tasks that run its handlers.
progress_sink: ContextVar[ProgressSink | None] = ContextVar("earnorm_progress", default=None)


def check_state(state: object) -> str:
    """
    >>> check_state("UPLOADING")
    'UPLOADING'
    >>> check_state("SUCCESS")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    earnorm._errors.EventValidationError: progress state 'SUCCESS' is one of Celery's own ...
    """
    if not isinstance(state, str) or not _STATE_RE.fullmatch(state):
        raise EventValidationError(
            f"progress state must be an upper-case name such as 'PROGRESS' (letters, digits, "
            f"'_', at most 64), got {state!r}")
    if state in CELERY_STATES:
        raise EventValidationError(
            f"progress state {state!r} is one of Celery's own states; a report names a state "
            "of its own, such as 'PROGRESS'")
    return state


def progress_info(done: object, total: object, meta: dict[str, Any]) -> dict[str, Any]:
    """The report a Celery client reads as ``AsyncResult.info``.

    >>> progress_info(3, 10, {"stage": "resize"})
    {'done': 3, 'total': 10, 'stage': 'resize'}
    """
    if not _number(done) or done < 0:  # type: ignore[operator]
        raise EventValidationError(f"progress done must be a number >= 0, got {done!r}")
    if total is not None and (not _number(total) or total < 0):  # type: ignore[operator]
        raise EventValidationError(f"progress total must be a number >= 0 or None, got "
                                   f"{total!r}")
    return {"done": done, "total": total, **meta}


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and value == value  # not NaN
