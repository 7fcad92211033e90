"""What a consumer tells the outside about each task: Celery events (``_broker/celery_presence``)
and Prometheus counters (``_telemetry/metrics``). One object, or None when neither is on (the
pipeline then never calls it); ``started`` when a task starts, ``settled`` for every outcome."""

from __future__ import annotations

import time
from typing import Any

from earnorm.events._broker.celery_presence import CeleryPresence
from earnorm.events._telemetry.metrics import Metrics
from earnorm.events._wire import decode as protocol
from earnorm.events._wire.failures import FailureReason
from earnorm.events.consumer import _decide as decide


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

    def settled(self, message: protocol.Message | None, outcome: decide.Outcome,
                failures: decide.Failures) -> None:
        """Every outcome of every message: a task that ``started`` finished (succeeded,
        retried, failed); one that never ran was rejected (or revoked: expired)."""
        began = None if message is None else self._started.pop(message.id, None)
        if began is not None and message is not None:
            if isinstance(outcome, decide.Ack):
                self._finished(message, "succeeded", began, result=outcome.result)
            elif failures:
                retried = isinstance(outcome, decide.Retry)
                self._finished(message, "retried" if retried else "failed", began,
                               failures[0][1].error)
        if isinstance(outcome, decide.DeadLetter):
            if outcome.reason is not FailureReason.HANDLER_ERROR:
                self.rejected(message.task if message else outcome.name,
                              message.id if message else outcome.job_id,
                              expired=outcome.reason is FailureReason.EXPIRED)
            if self.metrics is not None:
                self.metrics.dead_lettered(str(outcome.reason))
        elif isinstance(outcome, decide.Revoked) and message is not None:
            if self.metrics is not None:
                self.metrics.task("revoked", message.task)
            if self.presence is not None:
                self.presence.task_revoked(message.id, expired=False,
                                           terminated=outcome.reason == "terminated")
        elif isinstance(outcome, decide.Unhandled) and self.metrics is not None:
            assert message is not None
            self.metrics.unhandled(message.task)

    def _finished(self, message: protocol.Message, outcome: str, began: float,
                  error: BaseException | None = None, result: Any = None) -> None:
        """``outcome``: ``succeeded``, ``retried`` or ``failed``."""
        if self.presence is not None:
            self.presence.task_finished(message.id, message.task, error, outcome, result)
        if self.metrics is not None:
            if outcome == "failed":
                self.metrics.task_failed(message.task, error)
            else:
                self.metrics.task(outcome, message.task)
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
