"""Settling a message: the Redis side of an ``Outcome`` (ack, defer, retry, dead-letter), and
the counters of what was settled how."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from earnorm.events import _protocol as protocol
from earnorm.events._broker import Broker
from earnorm.events._clock import ServerClock
from earnorm.events._failures import FailureReason, failure_record
from earnorm.events.consumer import _decide as decide
from earnorm.events.consumer._acks import AckBatcher
from earnorm.events.consumer._resilient import RedisHealth, until_done

log = logging.getLogger("earnorm.consumer")


class Settler:
    """Applies outcomes for one consumer; ``processed``/``failed``/``retried`` count them."""

    def __init__(
        self, broker: Broker, consumer_id: str, clock: ServerClock, acks: AckBatcher,
        forget: Callable[[int], None], health: RedisHealth,
    ) -> None:
        self._broker = broker
        self._health = health
        self.consumer_id = consumer_id
        self._clock = clock
        self._acks = acks
        self._forget = forget
        self.processed = 0
        self.failed = 0
        self.retried = 0

    def ack_handled(self, field: int) -> None:
        """The hot path: an event all of whose handlers succeeded."""
        self.processed += 1
        self._acks.ack(field)

    async def apply(
        self, field: int, raw: bytes, message: protocol.Message | None, outcome: decide.Outcome
    ) -> None:
        """Do in Redis what ``outcome`` says, riding out Redis outages: the handlers already
        ran, so only the settling is tried again."""
        broker = self._broker
        if isinstance(outcome, decide.Ack):
            self.ack_handled(field)
            return
        if isinstance(outcome, decide.Defer):
            ours = await until_done("settle", lambda: broker.defer(
                self.consumer_id, field, raw, outcome.ready_index, outcome.due_ms), self._health)
        elif isinstance(outcome, decide.Retry):
            retry = (outcome.envelope, outcome.ready_index, outcome.due_ms)
            ours = await until_done("settle", lambda: broker.settle(
                self.consumer_id, field, retry=retry), self._health)
            self.retried += ours
        else:
            ours = await self._dead_letter(field, raw, message, outcome)
        if not ours:
            log.warning("message in field %d was recovered by another consumer while this one "
                        "held it; its redelivered copy settles it", field)
        self._forget(field)

    async def _dead_letter(
        self, field: int, raw: bytes, message: protocol.Message | None,
        outcome: decide.DeadLetter,
    ) -> bool:
        broker = self._broker
        job_id = message.id if message is not None else f"undecodable-{uuid.uuid4()}"
        now_ms = self._clock.now_ms()
        # Handlers of this event that gave up on an earlier attempt already have a record.
        previous = None
        if (message is not None and message.retries
                and outcome.reason is FailureReason.HANDLER_ERROR):
            previous = await until_done("settle", lambda: broker.failed.get(job_id),
                                        self._health)
        failures = list(outcome.failures)
        record = failure_record(
            job_id=job_id, reason=outcome.reason, raw=raw, now_ms=now_ms, message=message,
            detail=outcome.detail, failures=failures, previous=previous,
            deliveries=outcome.deliveries, died_holding=outcome.died_holding,
        )
        why = outcome.detail or "; ".join(f"{f.handler}: {f.error!r}" for f in failures)
        log.error("message %s moved to the failed store: %s: %s", job_id, outcome.reason, why)
        retry = outcome.retry
        scheduled = None if retry is None else (retry.envelope, retry.ready_index, retry.due_ms)
        ours = await until_done("settle", lambda: broker.settle(
            self.consumer_id, field, retry=scheduled, dead=(job_id, record, now_ms)),
            self._health)
        if ours:
            self.failed += 1
            self.retried += retry is not None
        return ours
