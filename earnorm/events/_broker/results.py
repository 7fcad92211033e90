"""Task results in Celery's Redis result backend format, so a Celery client's
``AsyncResult.get()`` sees what an EarnORM handler returned (or raised).

One key per task, ``celery-task-meta-<task id>``, holding JSON ``{"status", "result",
"traceback", "children", "date_done", "task_id"}``, set with the ``result_expires`` TTL and
PUBLISHed on the channel of the same name (Celery's result consumer waits on it). A failure's
``result`` is ``{"exc_type", "exc_message", "exc_module"}``, from which Celery rebuilds the
exception. Off unless ``event_config["result_backend"]`` is set: events are fire-and-forget.
"""

from __future__ import annotations

import traceback
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from earnorm.events._broker.keys import RESULT_PREFIX
from earnorm.events._wire.kombu_types import to_wire


def wire_result(result: Any) -> Any:
    """The result as JSON carries it (kombu's tags for datetime, Decimal, ...)."""
    try:
        return to_wire(result, "result", plain=False)
    except Exception:
        return repr(result)


def exception_info(error: BaseException) -> dict[str, Any]:
    """A failure as Celery stores it, from which it rebuilds the exception."""
    return {"exc_type": type(error).__name__,
            "exc_message": [_plain(a) for a in error.args],
            "exc_module": type(error).__module__}


def success_meta(task_id: str, result: Any, group_id: str | None = None) -> bytes:
    """
    >>> orjson.loads(success_meta("t-1", {"total": 3}))["status"]
    'SUCCESS'
    """
    try:
        value = to_wire(result, "result", plain=False)
    except Exception as exc:  # what Celery's JSON result serializer would refuse too
        return failure_meta(task_id, EncodeError(f"result is not JSON serializable: {exc}"),
                            group_id=group_id)
    return _meta(task_id, "SUCCESS", value, None, group_id)


def failure_meta(
    task_id: str, error: BaseException, state: str = "FAILURE", group_id: str | None = None
) -> bytes:
    """
    >>> meta = orjson.loads(failure_meta("t-1", ValueError("card declined")))
    >>> meta["status"], meta["result"]["exc_type"], meta["result"]["exc_message"]
    ('FAILURE', 'ValueError', ['card declined'])
    """
    result = exception_info(error)
    tb = "".join(traceback.format_exception(error)) if error.__traceback__ else None
    return _meta(task_id, state, result, tb, group_id)


def progress_meta(task_id: str, state: str, info: dict[str, Any]) -> bytes:
    """A running task's report, as Celery's ``update_state`` stores it (no ``date_done``:
    the task has not finished).

    >>> meta = orjson.loads(progress_meta("t-1", "PROGRESS", {"done": 1, "total": 4}))
    >>> meta["status"], meta["result"], meta["date_done"]
    ('PROGRESS', {'done': 1, 'total': 4}, None)
    """
    return _meta(task_id, state, info, None, None, done=False)


class EncodeError(Exception):
    """A handler's return value that JSON cannot carry (Celery raises kombu's EncodeError)."""


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _meta(task_id: str, status: str, result: Any, tb: str | None,
          group_id: str | None, *, done: bool = True) -> bytes:
    meta: dict[str, Any] = {
        "status": status, "result": result, "traceback": tb, "children": [],
        "date_done": datetime.now(UTC).isoformat() if done else None,
    }
    if group_id is not None:  # a group member: GroupResult.get() collects by it
        meta["group_id"] = group_id
    meta["task_id"] = task_id
    return orjson.dumps(meta)


class ResultBackend:
    def __init__(self, redis: Redis, expires: float) -> None:
        self.redis = redis
        self.expires = expires

    async def store(self, task_id: str, meta: bytes) -> None:
        key = RESULT_PREFIX + task_id
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key, meta, ex=max(int(self.expires), 1))
            pipe.publish(key, meta)
            await pipe.execute()

    async def close(self) -> None:
        await self.redis.aclose()
