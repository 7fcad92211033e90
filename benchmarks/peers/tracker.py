"""Handler-side instrumentation, imported by every peer's worker process.

Handlers call ``TRACKER.begin(data)`` when they start and ``TRACKER.end()`` when they finish.
The tracker counts in process memory and touches Redis only twice (warm-up and the final
result), so it adds almost nothing to the per-event cost being measured. Workers whose
handlers run in several processes (Celery's prefork pool) set ``BENCH_SHARED=1``; the count
then lives in Redis (one INCR per event, negligible next to a 10 ms handler).

Configuration comes from the environment the driver sets when it starts the worker:
``BENCH_REDIS_URL``, ``BENCH_TARGET`` (events to wait for) and ``BENCH_SHARED``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import redis

RESULT_KEY = "bench:result"
WARM_KEY = "bench:warm"
FIRST_KEY = "bench:first"
COUNT_KEY = "bench:count"
LAST_KEY = "bench:last"


class Tracker:
    """Counts handled events and records timing samples for one worker process."""

    def __init__(self) -> None:
        self._url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
        self._target = int(os.environ.get("BENCH_TARGET", "0"))
        self._shared = os.environ.get("BENCH_SHARED") == "1"
        self._lock = threading.Lock()
        self._count = 0
        self._first = 0.0
        self._samples: list[float] = []
        self._client: redis.Redis | None = None

    def _redis(self) -> redis.Redis:
        # Created lazily so that a prefork child never reuses its parent's socket.
        if self._client is None:
            self._client = redis.Redis.from_url(self._url)
        return self._client

    def begin(self, data: dict[str, Any]) -> bool:
        """Record a handler start. Returns False for the warm-up event, which is not counted."""
        now = time.time()
        if data.get("warm"):
            self._redis().set(WARM_KEY, "1")
            return False
        if self._shared:
            self._redis().set(FIRST_KEY, repr(now), nx=True)
            return True
        reference = data.get("due", data.get("t"))
        with self._lock:
            if not self._first:
                self._first = now
            if reference is not None:
                self._samples.append(now - reference)
        return True

    def end(self) -> None:
        """Record a handler finish; the last expected one publishes the result."""
        now = time.time()
        if self._shared:
            if self._redis().incr(COUNT_KEY) == self._target:
                self._redis().set(LAST_KEY, repr(now))
            return
        with self._lock:
            self._count += 1
            finished = self._count == self._target
        if finished:
            result = {"first": self._first, "last": now, "samples": self._samples}
            self._redis().set(RESULT_KEY, json.dumps(result))


TRACKER = Tracker()
