"""One exception family for the whole package: every error EarnORM raises is an ``EarnORMError``."""

from __future__ import annotations


class EarnORMError(Exception):
    """Base class of every error raised by EarnORM."""


class ConfigError(EarnORMError, ValueError):
    """Invalid configuration given to ``init()`` or a component; the message names the field."""


class NotInitializedError(EarnORMError, RuntimeError):
    """A component was used before ``earnorm.init()`` set it up."""


class EventValidationError(EarnORMError, ValueError):
    """An event is invalid: bad name, or data that cannot travel on the wire."""


class SerializationError(EventValidationError):
    """A value inside an event cannot be serialized; the message names the field path."""


class MessageDecodeError(EarnORMError, ValueError):
    """A message read from the broker cannot be decoded into an event; ``task_id`` and
    ``task`` are what its headers could still tell (None when they could not)."""

    def __init__(self, message: str, task_id: str | None = None,
                 task: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.task = task


class BrokerConnectionError(EarnORMError):
    """Redis cannot be reached (at ``init()``, or when a consumer starts); ``__cause__`` holds
    redis-py's error. The message names the URL, without its secrets."""


class UnsupportedProtocol(MessageDecodeError):
    """A Celery message of a protocol EarnORM does not read (protocol 1); ``task_id`` and
    ``task`` are what it could still tell."""

    def __init__(self, message: str, task_id: str | None, task: str | None) -> None:
        super().__init__(message, task_id, task)


class PublishError(EarnORMError, ConnectionError):
    """Publishing failed after the retry policy ran out; ``__cause__`` holds the last error."""


class NotReplicated(PublishError):
    """The event is on the master but fewer replicas than ``min_replicas_ack`` confirmed it in
    time: it is most likely delivered, but a failover now could lose it. Publishing again may
    deliver it twice."""

    def __init__(self, message: str, job_ids: list[str], acked: int) -> None:
        super().__init__(message)
        self.job_ids = job_ids
        self.acked = acked


class JobNotFound(EarnORMError, KeyError):
    """No failed job with the given id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class HandlerTimeout(EarnORMError, TimeoutError):
    """A handler ran longer than its timeout."""


class TimeLimitExceeded(HandlerTimeout):
    """A handler ran past its hard time limit (``time_limit=``, or Celery's ``timelimit``
    header): it was cancelled, and fails like any error (retry policy, then the failed store)."""


class SoftTimeLimitExceeded(EarnORMError):
    """Raised inside a handler at its soft time limit (``soft_time_limit=``, or the first value
    of Celery's ``timelimit`` header), as Celery raises its own: the handler may catch it,
    clean up and return (or raise) before the hard limit cancels it."""


class ValidationError(EarnORMError, ValueError):
    """A model value has the wrong type or a required field is missing; the message names it."""


class DatabaseError(EarnORMError):
    """MongoDB is unreachable or refused an operation; ``__cause__`` holds PyMongo's error."""


class DocumentNotFound(DatabaseError, LookupError):
    """The document an update or delete targeted is no longer in its collection."""
