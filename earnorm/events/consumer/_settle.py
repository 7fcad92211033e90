"""Settling a message: the Redis side of an ``Outcome`` (ack, defer, retry, dead-letter), and
the counters of what was settled how.

A Celery canvas is carried on here: a success publishes the message's ``link`` callbacks and
the next step of its ``chain``, a permanent failure its ``link_error`` errbacks, in the same
script that acks (or dead-letters) it, so a follow-up is published exactly when its message is
settled. With a result backend, the handler's return value (or error) is stored first."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Callable
from typing import Any

from earnorm.events._broker import results as result_meta
from earnorm.events._broker.broker import Broker
from earnorm.events._broker.chords import ChordJoin, Completed
from earnorm.events._broker.errors import RETRYABLE_ERRORS
from earnorm.events._broker.keys import Keys
from earnorm.events._broker.results import ResultBackend
from earnorm.events._broker.topology import for_cluster
from earnorm.events._wire import canvas
from earnorm.events._wire import decode as protocol
from earnorm.events._wire.celery_errors import ChordError, TaskRevokedError, client_failure
from earnorm.events._wire.clock import ServerClock
from earnorm.events._wire.failures import FailureReason, failure_record
from earnorm.events.consumer import _decide as decide
from earnorm.events.consumer._acks import AckBatcher
from earnorm.events.consumer._resilient import RedisHealth, until_done

log = logging.getLogger("earnorm.consumer")



class Settler:
    """Applies outcomes for one consumer; ``processed``/``failed``/``retried``/``unhandled``
    count them."""

    def __init__(
        self, broker: Broker, consumer_id: str, clock: ServerClock, acks: AckBatcher,
        forget: Callable[[int], None], health: RedisHealth,
        results: ResultBackend | None = None,
        on_sent: Callable[[str], None] | None = None,
    ) -> None:
        self._broker = broker
        self._chords = ChordJoin(results.redis, results.expires) if results else None
        self._on_sent = on_sent
        self._results = results
        self.stores_results = results is not None
        self._list_keys: dict[tuple[str, int], str] = {}
        self._health = health
        self.consumer_id = consumer_id
        self._clock = clock
        self._acks = acks
        self._forget = forget
        self.processed = 0
        self.failed = 0
        self.retried = 0
        self.unhandled = 0
        self.revoked = 0
        self._unhandled_names: set[str] = set()
        # Settles waiting for a Redis that refuses writes, off the workers (see ``apply``).
        self._waiting: set[asyncio.Task[None]] = set()

    def carries_on(self, message: protocol.Message) -> bool:
        """Whether a success needs more than an ack: a canvas to carry on, a result to store."""
        return self.stores_results or canvas.has_follow_ups(message)

    async def close(self) -> None:
        await self.abandon()
        if self._results is not None:
            await self._results.close()

    async def wait_settled(self) -> None:
        """Until every waiting settle is done (a graceful stop gives them its timeout)."""
        while self._waiting:
            await asyncio.wait(set(self._waiting))

    async def abandon(self) -> None:
        """Cancel the waiting settles: their messages stay in the in-flight hash, so the stop's
        hand-back (or, after a crash, a recovery) delivers them again."""
        for task in self._waiting:
            task.cancel()
        if self._waiting:
            await asyncio.wait(set(self._waiting))

    def ack_handled(self, field: int) -> None:
        """The hot path: an event all of whose handlers succeeded."""
        self.processed += 1
        self._acks.ack(field)

    async def apply(
        self, field: int, raw: bytes, message: protocol.Message | None, outcome: decide.Outcome
    ) -> None:
        """Do in Redis what ``outcome`` says, riding out Redis outages: the handlers already
        ran, so only the settling is tried again.

        While Redis refuses writes (``maxmemory``), a settle that writes (retry, dead-letter,
        follow-ups) waits in a task of its own and the worker goes on: the acks of the messages
        it handles meanwhile are what free the memory. Were the workers to wait, a run of
        failures as long as the concurrency would stop the consumer for good. (A retry, defer
        or unhandled count refused at its first try moves there too: Redis refuses a script
        whole, so nothing was written.)"""
        if isinstance(outcome, decide.Ack) and (message is None or not self.carries_on(message)):
            self.ack_handled(field)
            return
        if self._health.state != "refusing writes":
            try:
                await self._settle(field, raw, message, outcome, first_try=True)
                return
            except RETRYABLE_ERRORS as exc:  # only a refusal escapes: wait for room apart
                self._health.failed("settle", exc)
        task = asyncio.get_running_loop().create_task(
            self._settle(field, raw, message, outcome))
        self._waiting.add(task)
        task.add_done_callback(self._settled_later)

    def _settled_later(self, task: asyncio.Task[None]) -> None:
        self._waiting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("settling a message failed; it stays in flight and is delivered again "
                      "after a restart", exc_info=task.exception())

    async def _settle(
        self, field: int, raw: bytes, message: protocol.Message | None, outcome: decide.Outcome,
        first_try: bool = False,
    ) -> None:
        broker = self._broker
        if isinstance(outcome, decide.Ack):
            assert message is not None
            await self._succeeded(field, message, outcome.result)
            return
        if isinstance(outcome, decide.Unhandled):
            assert message is not None
            self._warn_unhandled(message.task)
            ours = await until_done("settle", lambda: broker.settle(
                self.consumer_id, field, count="unhandled"), self._health,
                escape_refused=first_try)
            self.unhandled += ours
        elif isinstance(outcome, decide.Defer):
            ours = await until_done("settle", lambda: broker.defer(
                self.consumer_id, field, outcome.envelope or raw, outcome.ready_index,
                outcome.due_ms), self._health, escape_refused=first_try)
        elif isinstance(outcome, decide.Retry):
            retry = (outcome.envelope, outcome.ready_index, outcome.due_ms)
            ours = await until_done("settle", lambda: broker.settle(
                self.consumer_id, field, retry=retry), self._health, escape_refused=first_try)
            self.retried += ours
        elif isinstance(outcome, decide.Revoked):
            ours = await self._revoked(field, message, outcome.reason)
        else:
            ours = await self._dead_letter(field, raw, message, outcome)
        if not ours:
            log.warning("message in field %d was recovered by another consumer while this one "
                        "held it; its redelivered copy settles it", field)
        self._forget(field)

    async def _revoked(self, field: int, message: protocol.Message | None, reason: str) -> bool:
        """Revoked before it ran, or cancelled while it ran: REVOKED for a Celery client, as
        its worker stores it (``TaskRevokedError('revoked' | 'terminated')``), then acked and
        counted; never retried."""
        assert message is not None
        log.info("task %s (%s) %s", message.id, message.task,
                 "terminated: revoked while it ran" if reason == "terminated" else "revoked: "
                 "not run")
        await self._store_result(message, lambda: result_meta.failure_meta(
            message.id, TaskRevokedError(reason), "REVOKED", group_id=_group(message)))
        ours = await until_done("settle", lambda: self._broker.settle(
            self.consumer_id, field, count="revoked"), self._health)
        self.revoked += ours
        return ours

    def _warn_unhandled(self, name: str) -> None:
        if name in self._unhandled_names:
            return
        self._unhandled_names.add(name)
        log.warning("no handler subscribes to %r: its events are acknowledged and counted as "
                    "unhandled (stats() counters.unhandled); register a handler for it, or set "
                    "event_config unhandled_events='dead_letter' to keep them in the failed "
                    "store. Said once per event name.", name)

    async def _succeeded(self, field: int, message: protocol.Message, result: Any) -> None:
        await self._store_result(message, lambda: result_meta.success_meta(
            message.id, result, _group(message)))
        pushes = self._follow_ups(message, lambda q: canvas.on_success(message, result, q))
        chord, body = await self._chord_part(message, "SUCCESS",
                                             result_meta.wire_result(result))
        pushes += body
        if not pushes:
            self.ack_handled(field)
        else:
            ours = await until_done("settle", lambda: self._broker.settle(
                self.consumer_id, field, pushes=pushes, count="processed"), self._health)
            self.processed += ours
            self._forget(field)
        await self._release_chord(chord)

    async def _chord_part(
        self, message: protocol.Message, state: str, value: Any
    ) -> tuple[Completed | None, list[tuple[str, bytes]]]:
        """Record this chord part. If it completed the chord: the completion (release it once
        settled) and the body to publish, or, for a failed chord, no body and the body's
        failure stored. (None, []) when the message is no chord part or did not complete."""
        joins, part = self._chords, canvas.chord_of(message)
        if joins is None or part is None:
            return None, []
        group_id, index = part
        done = await until_done("chord", lambda: joins.part_done(
            group_id, message.id, index, state, value), self._health)
        if done is None:
            return None, []
        if done.failed is None:
            return done, self._follow_ups(
                message, lambda q: [canvas.chord_body(message, done.results, q)])
        body = (message.embed or {}).get("chord") or {}
        body_id = (body.get("options") or {}).get("task_id")
        failed_id, error = done.failed
        log.error("chord %s failed: part %s raised %s", group_id, failed_id, error)
        if isinstance(body_id, str):
            chord_error = ChordError(f"Dependency {failed_id} raised {error!r}")
            await self._store_result(message, lambda: result_meta.failure_meta(
                body_id, chord_error), task_id=body_id)
        return done, []

    async def _release_chord(self, done: Completed | None) -> None:
        joins = self._chords
        if done is not None and joins is not None:
            await until_done("chord", lambda: joins.release(done), self._health)

    def _follow_ups(
        self, message: protocol.Message,
        make: Callable[[str], list[canvas.FollowUp]],
    ) -> list[tuple[str, bytes]]:
        """(list key, envelope) of each follow-up; a signature EarnORM cannot carry on is
        logged as an error (never dropped without a word) and the others go on."""
        try:
            follow_ups = make(self._broker.keys.queue)
        except canvas.CanvasError as exc:
            log.error("message %s: its canvas is not carried on: %s", message.id, exc)
            return []
        for follow_up in follow_ups:
            log.info("message %s: published %s to %s", message.id, follow_up.task,
                     follow_up.queue)
            if self._on_sent is not None:
                self._on_sent(follow_up.task)
        return [(self._list_key(f.queue, f.priority), f.envelope) for f in follow_ups]

    def _list_key(self, queue: str, priority: int) -> str:
        key = self._list_keys.get((queue, priority))
        if key is None:
            keys = self._broker.keys
            if queue != keys.queue:  # on a cluster, "mail" is "{mail}" as everywhere else
                keys = Keys.for_queue(for_cluster(dataclasses.replace(
                    self._broker.config, queue_name=queue), self._broker.cluster))
            key = self._list_keys[(queue, priority)] = keys.ready[keys.ready_index(priority)]
        return key

    async def _store_result(
        self, message: protocol.Message | None, meta: Callable[[], bytes],
        task_id: str | None = None,
    ) -> None:
        """Store ``meta()`` under ``task_id`` (default: the message's own id; one of the two
        is given)."""
        if self._results is None or (task_id is None and message is not None
                                     and message.headers.get("ignore_result") is True):
            return
        backend = self._results
        key = task_id or (message.id if message is not None else "")
        await until_done("result", lambda: backend.store(key, meta()), self._health)

    async def diverted(self, job_ids: list[str], max_bytes: int) -> None:
        """Messages the fetch diverted as too large, under the ids their headers named: their
        clients hear of it as from a Celery worker that could not decode them."""
        for job_id in job_ids:
            await self._store_failure(job_id, None, decide.DeadLetter(
                FailureReason.TOO_LARGE, f"message exceeds max_message_bytes ({max_bytes})",
                job_id=job_id))

    async def _store_failure(self, job_id: str, message: protocol.Message | None,
                             outcome: decide.DeadLetter) -> None:
        """What a Celery client waiting on ``job_id`` sees: the handler's error, or the state
        and error a Celery worker would store for this failure (a message with no id of its
        own has no client to tell)."""
        if self._results is None or (message is None and outcome.job_id is None):
            return
        if outcome.failures:
            error, state = outcome.failures[0].error, "FAILURE"
        else:
            known = client_failure(outcome.reason, outcome.detail)
            if known is None:
                return
            error, state = known
        await self._store_result(message, lambda: result_meta.failure_meta(
            job_id, error, state, group_id=_group(message)),
            task_id=None if message is not None else job_id)

    async def _dead_letter(
        self, field: int, raw: bytes, message: protocol.Message | None,
        outcome: decide.DeadLetter,
    ) -> bool:
        broker = self._broker
        job_id = message.id if message is not None else (
            outcome.job_id or f"undecodable-{uuid.uuid4()}")
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
            name=outcome.name, envelope_aside=broker.holds(self.consumer_id, field),
        )
        why = outcome.detail or "; ".join(f"{f.handler}: {f.error!r}" for f in failures)
        log.error("message %s moved to the failed store: %s: %s", job_id, outcome.reason, why)
        retry = outcome.retry
        scheduled = None if retry is None else (retry.envelope, retry.ready_index, retry.due_ms)
        pushes: list[tuple[str, bytes]] = []
        chord = None
        await self._store_failure(job_id, message, outcome)
        if message is not None and outcome.reason is FailureReason.HANDLER_ERROR:
            pushes = self._follow_ups(message, lambda q: canvas.on_failure(message, q))
            chord, body = await self._chord_part(message, "FAILURE",
                                                 result_meta.exception_info(failures[0].error))
            pushes += body
        ours = await until_done("settle", lambda: broker.settle(
            self.consumer_id, field, retry=scheduled, dead=(job_id, record, now_ms),
            pushes=pushes), self._health)
        if ours:
            self.failed += 1
            self.retried += retry is not None
        await self._release_chord(chord)
        return ours


def _group(message: protocol.Message | None) -> str | None:
    group = message.headers.get("group") if message is not None else None
    return group if isinstance(group, str) else None
