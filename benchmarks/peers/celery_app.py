"""The Celery app and tasks the Celery worker imports (``celery -A celery_app worker``)."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from tracker import TRACKER

app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_ignore_result=True,
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH", "4")),
)


@app.task(name="bench.noop")
def noop(data: dict[str, Any]) -> None:
    if TRACKER.begin(data):
        TRACKER.end()


@app.task(name="bench.io")
def io(data: dict[str, Any]) -> None:
    # Blocking sleep: the prefork and threads pools run it as is, gevent patches it.
    if TRACKER.begin(data):
        time.sleep(0.01)
        TRACKER.end()
