"""What a Celery client's ``AsyncResult.get()`` raises for each way a message can fail here:
exception classes named and placed as Celery's, kombu's and billiard's own (Celery rebuilds a
stored failure from ``exc_module`` and ``exc_type``, so the client gets the real class), and
the state a Celery worker would store (FAILURE, or REVOKED for an expired task). Pure: no I/O.
"""

from __future__ import annotations

from earnorm.events._wire.failures import FailureReason


def _named(cls: type[BaseException], name: str, module: str) -> type[BaseException]:
    cls.__name__ = cls.__qualname__ = name
    cls.__module__ = module
    return cls


class _ChordError(Exception):
    """``celery.exceptions.ChordError``: a part of the chord's header failed."""


class _NotRegistered(KeyError):
    """``celery.exceptions.NotRegistered`` (a KeyError too): no worker has the task."""


class _TaskRevokedError(Exception):
    """``celery.exceptions.TaskRevokedError``: what Celery 5.7 stores for an expired task."""


class _DecodeError(Exception):
    """``kombu.exceptions.DecodeError``: the message could not be decoded."""


class _WorkerLostError(Exception):
    """``billiard.exceptions.WorkerLostError``: the process running the task died."""


ChordError = _named(_ChordError, "ChordError", "celery.exceptions")
NotRegistered = _named(_NotRegistered, "NotRegistered", "celery.exceptions")
TaskRevokedError = _named(_TaskRevokedError, "TaskRevokedError", "celery.exceptions")
DecodeError = _named(_DecodeError, "DecodeError", "kombu.exceptions")
WorkerLostError = _named(_WorkerLostError, "WorkerLostError", "billiard.exceptions")


def client_failure(reason: FailureReason, detail: str) -> tuple[BaseException, str] | None:
    """The error and state to store for a message dead-lettered for ``reason`` (not a
    handler's own error: that one is stored as raised), None for a reason that has none.

    >>> error, state = client_failure(FailureReason.EXPIRED, "expired at ...")
    >>> type(error).__name__, error.args, state
    ('TaskRevokedError', ('expired',), 'REVOKED')
    """
    if reason is FailureReason.EXPIRED:
        return TaskRevokedError("expired"), "REVOKED"
    if reason is FailureReason.NO_HANDLER:
        return NotRegistered(detail), "FAILURE"
    if reason in (FailureReason.UNDECODABLE, FailureReason.UNSUPPORTED_PROTOCOL,
                  FailureReason.TOO_LARGE):
        return DecodeError(detail), "FAILURE"
    if reason is FailureReason.DELIVERY_LIMIT:
        return WorkerLostError(detail), "FAILURE"
    if reason is FailureReason.ETA_OUT_OF_RANGE:
        return ValueError(detail), "FAILURE"
    return None
