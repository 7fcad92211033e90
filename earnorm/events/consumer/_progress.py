"""``Event.progress()``'s other end in a consumer: checks that the event's handler is running
here, then writes the report where each reader looks (``Q:progress:<job id>`` for the
dashboard, the result backend for a Celery client, a task event for Flower). At most one write
per job every ``interval`` seconds, except a report that reaches its total; what is reported in
between is superseded by the next report (or by the job's own outcome)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Container
from typing import Any

import orjson

from earnorm._errors import EarnORMError
from earnorm.events._broker.celery_presence import CeleryPresence
from earnorm.events._broker.errors import RETRYABLE_ERRORS
from earnorm.events._broker.progress import ProgressStore
from earnorm.events._broker.results import ResultBackend, progress_meta
from earnorm.events._wire.kombu_types import to_wire

log = logging.getLogger("earnorm.events.consumer")

INTERVAL_S = 0.1


class ProgressReporter:
    def __init__(self, store: ProgressStore, consumer_id: str, running: Container[str],
                 results: ResultBackend | None, presence: CeleryPresence | None,
                 interval: float = INTERVAL_S) -> None:
        self.store = store
        self.consumer_id = consumer_id
        self._running = running  # the pipeline's: job ids whose handlers run now
        self.results = results
        self.presence = presence
        self.interval = interval
        # job id -> when its last report was written (monotonic): the jobs that reported
        self.live: dict[str, float] = {}
        self._clearing: set[asyncio.Task[None]] = set()

    async def report(self, job_id: str, state: str, info: dict[str, Any]) -> None:
        if job_id not in self._running:
            raise EarnORMError(
                f"event.progress() for job {job_id}, which is not running here: a report "
                "comes from the handler running the event, before it returns (batch "
                "handlers report nothing)")
        wired = to_wire(info, "progress")  # EventValidationError naming a bad meta value
        now = time.monotonic()
        last = self.live.get(job_id)
        total = info["total"]
        if last is not None and now - last < self.interval and (
                total is None or info["done"] < total):
            return
        self.live[job_id] = now
        record = orjson.dumps({"state": state, "info": wired, "at": time.time(),
                               "consumer": self.consumer_id})
        try:
            await self.store.write(job_id, record)
            if self.results is not None:
                await self.results.store(job_id, progress_meta(job_id, state, wired))
        except RETRYABLE_ERRORS as exc:  # a report never fails the handler
            log.warning("progress of job %s not written: %s: %s", job_id,
                        type(exc).__name__, exc)
        if self.presence is not None:
            self.presence.task_progress(job_id, state, wired)

    def ended(self, job_id: str) -> None:
        """The job's handlers returned: its report goes (the outcome follows it)."""
        if self.live.pop(job_id, None) is not None:
            task = asyncio.ensure_future(self._clear(job_id))
            self._clearing.add(task)
            task.add_done_callback(self._clearing.discard)

    async def _clear(self, job_id: str) -> None:
        try:
            await self.store.clear(job_id)
        except RETRYABLE_ERRORS as exc:  # it lapses within the hour
            log.debug("progress of job %s not cleared: %s", job_id, exc)
