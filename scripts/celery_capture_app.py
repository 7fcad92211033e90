"""The Celery app that ``capture_celery_wire.py`` runs as a real worker (``-A celery_capture_app``).

Configured from ``CAPTURE_REDIS_URL``. Every task body appends what it received to the Redis list
``capture:ran`` so the capture script can tell, by a condition and not a sleep, what ran.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery, Task, signals

REDIS_URL = os.environ.get("CAPTURE_REDIS_URL", "redis://127.0.0.1:6379/0")
RAN_KEY = "capture:ran"
READY_KEY = "capture:ready"


def make_app(redis_url: str) -> Celery:
    app = Celery("capture", broker=redis_url, set_as_current=False)
    app.conf.update(
        accept_content=os.environ.get("CAPTURE_ACCEPT", "json,msgpack").split(","),
        task_routes={"route.me": {"queue": "my_app:events"}},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_ignore_result=True,
        enable_utc=True,
        timezone="UTC",
    )
    return app


app = make_app(REDIS_URL)
_store = redis.Redis.from_url(REDIS_URL)


def _record(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _store.rpush(RAN_KEY, json.dumps({
        "task": task.name, "id": task.request.id, "retries": task.request.retries,
        "args": repr(list(args)), "kwargs": repr(kwargs),
    }))


@app.task(name="user.created", bind=True)
def user_created(self: Task, *args: Any, **kwargs: Any) -> None:
    _record(self, args, kwargs)


@app.task(name="route.me", bind=True)
def route_me(self: Task, *args: Any, **kwargs: Any) -> None:
    _record(self, args, kwargs)


@app.task(name="retry.me", bind=True, max_retries=3)
def retry_me(self: Task, *args: Any, **kwargs: Any) -> None:
    _record(self, args, kwargs)
    raise self.retry(countdown=60, exc=ValueError("boom"))


@app.task(name="retry.default", bind=True, max_retries=3, default_retry_delay=180)
def retry_default(self: Task, *args: Any, **kwargs: Any) -> None:
    _record(self, args, kwargs)
    raise self.retry()


@signals.worker_ready.connect
def _mark_ready(**_: Any) -> None:
    _store.set(READY_KEY, os.getpid())
