"""The Celery side of the interop suite: a stock Celery app whose tasks are named like events.

Imported by a real ``celery worker`` subprocess (``-A tests.interop.celery_app``), configured
from ``INTEROP_REDIS_URL`` and ``INTEROP_QUEUE``. Each task records what it received into the
Redis list ``<queue>:celery:received`` so the test can compare it with what was sent;
``worker_ready`` sets ``<queue>:celery:ready`` so the test waits on a condition, not a sleep.
The test process uses ``make_app`` to build a producer app for ``send_task``/``apply_async``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery, Task, signals
from kombu.utils import json as kombu_json

EVENT_TASKS = ("user.created", "user.updated", "order.placed", "fleet.event")


def received_key(queue: str) -> str:
    return f"{queue}:celery:received"


def ready_key(queue: str) -> str:
    return f"{queue}:celery:ready"


def make_app(redis_url: str, queue: str) -> Celery:
    app = Celery("interop", broker=redis_url, set_as_current=False)
    app.conf.update(
        accept_content=["json", "msgpack"],
        task_default_queue=queue,
        broker_transport_options={"visibility_timeout": 86400},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_ignore_result=True,
        enable_utc=True,
        timezone="UTC",
    )
    return app


def _current_trace() -> dict[str, str] | None:
    """With INTEROP_OTEL=1 the worker runs opentelemetry-instrumentation-celery: the trace and
    parent span of the task's ``run/<name>`` span, as hex."""
    if os.environ.get("INTEROP_OTEL") != "1":
        return None
    from opentelemetry import trace

    span = trace.get_current_span()
    parent = getattr(span, "parent", None)
    return {"trace_id": f"{span.get_span_context().trace_id:032x}",
            "parent_span_id": f"{parent.span_id:016x}" if parent else ""}


if os.environ.get("INTEROP_OTEL") == "1":
    from opentelemetry import trace as _trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    _trace.set_tracer_provider(TracerProvider())
    CeleryInstrumentor().instrument()

REDIS_URL = os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("INTEROP_QUEUE", "interop")
app = make_app(REDIS_URL, QUEUE)
if os.environ.get("INTEROP_REMOTE_CONTROL") == "1":  # hears broadcasts (revoke)
    app.conf.update(worker_enable_remote_control=True)
if os.environ.get("INTEROP_RESULT_BACKEND"):  # results (and chord parts) in Redis
    app.conf.update(result_backend=os.environ["INTEROP_RESULT_BACKEND"],
                    task_ignore_result=False)
_store = redis.Redis.from_url(REDIS_URL)


def _record(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    request = task.request
    record = {
        "task": task.name,
        "id": request.id,
        "args_repr": repr(list(args)),
        "kwargs_repr": repr(kwargs),
        # What a task gets back with kombu's own JSON round trip, which turns the
        # ``{"__type__", "__value__"}`` tags of a msgpack body back into Python values.
        "restored_repr": repr(kombu_json.loads(kombu_json.dumps([list(args), kwargs]))),
        "retries": request.retries,
        "eta": request.eta,
        "expires": request.expires,
        "priority": (request.delivery_info or {}).get("priority"),
        "trace": _current_trace(),
        "hostname": request.hostname,
        "pid": os.getpid(),
        "ran_at": time.time(),
    }
    _store.rpush(received_key(QUEUE), json.dumps(record))


def _event_task(name: str) -> None:
    @app.task(name=name, bind=True, shared=False)
    def run(self: Task, *args: Any, **kwargs: Any) -> None:
        _record(self, args, kwargs)


for _name in EVENT_TASKS:
    _event_task(_name)


@app.task(name="user.retried", bind=True, max_retries=3, shared=False)
def retried(self: Task, data: dict[str, Any], forward_to: str | None = None) -> None:
    """Republishes itself once with Celery's own ``self.retry()`` (wire.md 10), optionally onto
    another queue, where an EarnORM consumer receives the retry message."""
    _record(self, (data,), {"forward_to": forward_to})
    if self.request.retries == 0:
        options = {"queue": forward_to} if forward_to else {}
        raise self.retry(countdown=1, **options)


@app.task(name="results.add", bind=True, shared=False)
def add(self: Task, value: int) -> int:
    """Doubles, as the EarnORM handler of the same name does: a chord's parts can be either's."""
    _record(self, (value,), {})
    return 2 * value


@app.task(name="fleet.slow", bind=True, shared=False)
def slow(self: Task, *args: Any, **kwargs: Any) -> None:
    """Holds its worker (and the messages it prefetched, in ``unacked``) for a minute."""
    _record(self, args, kwargs)
    time.sleep(60)


@signals.worker_ready.connect
def _mark_ready(**_: Any) -> None:
    _store.set(ready_key(QUEUE), os.getpid())
