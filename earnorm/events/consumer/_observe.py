"""What a consumer tells the outside about each task: Celery events (``_celery_presence``) and
Prometheus counters (``_metrics``). One object, or None when neither is on, so the hot path
pays one ``is None`` test."""

from __future__ import annotations

import time
from typing import Any

from earnorm.events._broker.celery_presence import CeleryPresence
from earnorm.events._telemetry.metrics import Metrics
from earnorm.events._wire import decode as protocol


class TaskEvents:
    def __init__(self, presence: CeleryPresence | None, metrics: Metrics | None) -> None:
        self.presence = presence
        self.metrics = metrics
        self._started: dict[str, float] = {}

    def started(self, message: protocol.Message) -> None:
        """Received and started, as Celery reports a task that runs at once."""
        self._started[message.id] = time.perf_counter()
        if self.presence is not None:
            self.presence.task_received(message.id, message.task, message.args,
                                        message.kwargs, message.retries,
                                        message.headers.get("root_id"),
                                        message.headers.get("parent_id"))
            self.presence.task_started(message.id, message.task, message.args, message.kwargs)
        if self.metrics is not None:
            self.metrics.task("received", message.task)
            self.metrics.task("started", message.task)

    def finished(self, message: protocol.Message, outcome: str,
                 error: BaseException | None = None, result: Any = None) -> None:
        """``outcome``: ``succeeded``, ``retried`` or ``failed``."""
        began = self._started.pop(message.id, None)
        if self.presence is not None:
            self.presence.task_finished(message.id, message.task, error, outcome, result)
        if self.metrics is not None:
            if outcome == "failed":
                self.metrics.task_failed(message.task, error)
            else:
                self.metrics.task(outcome, message.task)
            if began is not None:
                self.metrics.observe_runtime(message.task, time.perf_counter() - began)

    def rejected(self, task: str | None, task_id: str | None, *, expired: bool = False) -> None:
        """Not run at all: undecodable, no handler, expired, delivery limit. Celery's
        ``task-revoked`` for an expired task, ``task-rejected`` for the others."""
        if self.metrics is not None:
            self.metrics.task("rejected", task or "")
        if self.presence is not None and task_id is not None:
            if expired:
                self.presence.task_revoked(task_id, expired=True)
            else:
                self.presence.task_rejected(task_id)
