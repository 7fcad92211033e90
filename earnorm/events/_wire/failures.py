"""Failed-job records: what the dead-letter hash stores about a message that could not run,
and reading one back (as ``get_failed_jobs`` shows it, and to run it again)."""

from __future__ import annotations

import base64
import hashlib
import re
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

from earnorm._errors import EventValidationError
from earnorm.events._wire import decode as protocol
from earnorm.events._wire import encode
from earnorm.events._wire.clock import iso_ms
from earnorm.events._wire.decode import Message
from earnorm.events._wire.kombu_types import to_wire
from earnorm.events._wire.records import FailedJob, HandlerError


class FailureReason(StrEnum):
    """Why a message ended in the failed store."""

    HANDLER_ERROR = "handler_error"  # handlers kept failing after the retry policy ran out
    NO_HANDLER = "no_handler"  # nothing registered for the task name
    UNDECODABLE = "undecodable"  # not a valid Celery message, refused content type, too large
    EXPIRED = "expired"  # its ``expires`` time passed before it could run
    DELIVERY_LIMIT = "delivery_limit"  # its consumers died holding it max_deliveries times
    TOO_LARGE = "too_large"  # over max_message_bytes: kept aside in Redis, never fetched
    ETA_OUT_OF_RANGE = "eta_out_of_range"  # a Celery eta further away than max_delay
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"  # Celery protocol 1
    NO_CONCURRENCY_KEY = "no_concurrency_key"  # its handler's concurrency_key found no value


@dataclass(frozen=True, slots=True)
class HandlerFailure:
    handler: str
    error: BaseException

    def as_dict(self) -> HandlerError:
        return {
            "handler": self.handler,
            "error_type": type(self.error).__name__,
            "error": str(self.error),
            "traceback": "".join(traceback.format_exception(self.error)),
        }


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def failure_record(
    *,
    job_id: str,
    reason: FailureReason,
    raw: bytes,
    now_ms: float,
    message: Message | None = None,
    detail: str = "",
    failures: list[HandlerFailure] | None = None,
    previous: bytes | None = None,
    deliveries: int = 0,
    died_holding: tuple[str, ...] = (),
    name: str | None = None,
    envelope_aside: bool = False,
) -> bytes:
    """The JSON record stored under ``job_id`` in ``Q:failed``.

    ``previous`` is the record already stored for this job, if any: when handlers of one event
    give up at different attempts (each has its own retry policy), the record gathers them all,
    so ``retry_job`` re-runs exactly the handlers that gave up. ``envelope_aside``: the message
    is large and held in a key of its own, which the settle script renames to ``Q:aside:<job
    id>``; the record leaves it out (its bytes never pass through Lua) and says so.
    """
    failures = failures or []
    first = (message.headers.get("earnorm_first_failure") if message else None) or _iso(now_ms)
    errors = [f.as_dict() for f in failures]
    record: FailedJob = {
        "job_id": job_id,
        "reason": str(reason),
        "detail": detail or (str(failures[0].error) if failures else ""),
        "name": message.task if message else name,
        "data": None,
        "metadata": (message.headers.get("earnorm_metadata") if message else None) or {},
        "attempts": (message.retries + 1) if message else 0,
        "first_failed_at": first,
        "last_failed_at": _iso(now_ms),
        "failed_at_ms": now_ms,
        "handlers": [f.handler for f in failures],
        "errors": errors,
        "error_type": errors[0]["error_type"] if errors else None,
        "error": errors[0]["error"] if errors else (detail or None),
        "traceback": errors[0]["traceback"] if errors else None,
    }
    if deliveries:
        record["deliveries"] = deliveries
        record["died_holding"] = list(died_holding)
    if previous is not None:
        _merge_previous(record, previous)
    if envelope_aside:
        record["envelope_aside"] = True
    else:
        _put_envelope(record, raw)
    if message is not None and (envelope_aside or len(raw) > DATA_IN_ENVELOPE_BYTES):
        record["data_in_envelope"] = True  # read_record decodes it: not stored twice
    elif message is not None:
        record["data"] = _data_of(message)
    return orjson.dumps(record)


# Over this, a record does not repeat the message's data beside its envelope: the settle
# script passes the record through Lua once (~6 ms a MB), so it stays as small as it can be.
DATA_IN_ENVELOPE_BYTES = 256 * 1024


def _put_envelope(record: FailedJob, raw: bytes) -> None:
    try:
        record["envelope"] = raw.decode("utf-8")
    except UnicodeDecodeError:  # keep the exact bytes: nothing is lost, even garbage
        record["envelope_base64"] = base64.b64encode(raw).decode("ascii")


def _data_of(message: Message) -> Any:
    try:
        return to_wire(message.to_event().data)
    except Exception:  # the record must be written (and read) even if the data is odd
        return None


# A too-large message's job id when its headers name none (the fetch script's choice too).
UNNAMED_PREFIX = "too-large-"
_HEADER_ID = re.compile(rb'"id"\s*:\s*"([^"\\]+)"')
_HEADER_TASK = re.compile(rb'"task"\s*:\s*"([^"\\]+)"')
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")


def too_large_record(raw: bytes, max_bytes: int, now_ms: float) -> tuple[str, bytes]:
    """(job id, record) for a message over ``max_bytes``, kept aside unrun: the record the
    fetch script writes for one (scripts._DIVERT), without decoding the message: the id and
    task are looked for in the 8 KB after ``"headers"``.

    >>> job, record = too_large_record(b'{"headers": {"id": "j1", "task": "t"}, "x": 1}', 10, 0)
    >>> job, orjson.loads(record)["name"], orjson.loads(record)["reason"]
    ('j1', 't', 'too_large')
    """
    sha = hashlib.sha1(raw, usedforsecurity=False).hexdigest()
    at = raw.find(b'"headers"')
    head = raw[at:at + 8200] if at >= 0 else b""
    found_id, found_task = _HEADER_ID.search(head), _HEADER_TASK.search(head)

    def ascii(value: bytes) -> str:
        return _NOT_PRINTABLE.sub(b"?", value).decode()

    job = ascii(found_id.group(1)) if found_id else UNNAMED_PREFIX + sha
    record: dict[str, object] = {
        "job_id": job, "reason": "too_large",
        "detail": f"message of {len(raw)} bytes exceeds max_message_bytes ({max_bytes}); kept "
                  "aside, not run",
        "name": ascii(found_task.group(1)) if found_task else None, "data": None,
        "metadata": {}, "attempts": 0, "first_failed_at": None, "last_failed_at": None,
        "failed_at_ms": now_ms, "handlers": [], "errors": [], "error_type": None,
        "error": f"too large: {len(raw)} bytes", "traceback": None, "size": len(raw),
        "sha1": sha, "preview": ascii(raw[:200]), "deliveries": 1, "died_holding": [],
    }
    return job, orjson.dumps(record)


def _merge_previous(record: FailedJob, previous: bytes) -> None:
    try:
        old = orjson.loads(previous)
    except orjson.JSONDecodeError:
        return
    if not isinstance(old, dict) or old.get("reason") != record["reason"]:
        return
    gave_up = [h for h in old.get("handlers", []) if h not in record["handlers"]]
    record["handlers"] = gave_up + record["handlers"]
    record["errors"] = [e for e in old.get("errors", []) if e.get("handler") in gave_up] + (
        record["errors"]
    )
    record["first_failed_at"] = old.get("first_failed_at") or record["first_failed_at"]


def read_record(job_id: str, record: bytes, failed_ms: float | None) -> FailedJob:
    """A stored record as users see it. Records written inside Redis (``too_large``) carry the
    failure time in ms only: the ISO forms are filled in here. A record whose message is kept
    aside (``envelope_aside``) is complete once ``with_envelope`` gave it the message."""
    job: FailedJob = orjson.loads(record)
    job["job_id"] = job_id
    if not job.get("envelope_aside") and job.pop("data_in_envelope", False):
        job["data"] = _envelope_data(job)
    ms = job.get("failed_at_ms") or failed_ms or 0.0
    job["failed_at_ms"] = ms
    if not job.get("last_failed_at"):
        job["last_failed_at"] = iso_ms(ms)
    if not job.get("first_failed_at"):
        job["first_failed_at"] = job["last_failed_at"]
    return job


def with_envelope(job: FailedJob, raw: bytes | None) -> FailedJob:
    """``job`` (an ``envelope_aside`` record) completed with its message, read from its aside
    key (None: removed meanwhile; the record stays without it, and cannot be retried). The flag
    stays: ``retry_job`` puts such a message back without passing it through a script."""
    if job.get("envelope_aside") and raw is not None:
        _put_envelope(job, raw)
        if job.pop("data_in_envelope", False):
            job["data"] = _envelope_data(job)
    job.pop("data_in_envelope", None)
    return job


def _envelope_data(job: FailedJob) -> Any:
    envelope = job.get("envelope")
    if not isinstance(envelope, str):
        return None
    try:
        return _data_of(protocol.decode(envelope.encode()))
    except Exception:
        return None


def parse_cursor(cursor: str | None) -> tuple[float, str] | None:
    if cursor is None:
        return None
    score, sep, job_id = str(cursor).partition(":")
    try:
        if not sep:
            raise ValueError
        return float(score), job_id
    except ValueError:
        raise EventValidationError(
            f"invalid cursor {cursor!r}: pass a job's 'cursor' value from get_failed_jobs()"
        ) from None


def requeue_message(job: FailedJob) -> tuple[bytes, int]:
    """A failed job's message made fresh to run again (retries reset), and its priority."""
    job_id = job["job_id"]
    raw = job.get("envelope")
    if not isinstance(raw, str):
        raise EventValidationError(
            f"failed job {job_id!r} cannot be retried: its message was not valid UTF-8"
        )
    try:
        message = protocol.decode(raw.encode())
    except Exception as exc:
        raise EventValidationError(
            f"failed job {job_id!r} cannot be retried: its message is undecodable ({exc})"
        ) from exc
    handlers = job.get("handlers") or []
    reason = job.get("reason")
    fresh = encode.encode_reset(
        message,
        # only the handlers that gave up run again; the others already succeeded
        pending=list(handlers) if reason == "handler_error" and handlers else None,
        # asked to run it anyway: it must not expire again at once
        clear_expires=reason == "expired",
    )
    return fresh, message.priority
