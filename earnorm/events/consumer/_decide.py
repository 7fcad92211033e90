"""What happens to a message: pure decisions, no Redis, no clock of their own (like h11's state
machine). The consumer does the I/O an ``Outcome`` asks for.

- ``before_running``: dead-letter it (no handler, expired), skip it (an event nobody
  subscribes to), defer it (a future Celery ``eta``), or run it (``None``), and which handlers
  (a retry names the ones still pending);
- ``after_running``: given the handlers' failures and their retry policies, ack it, retry it at
  a time, or dead-letter it (and possibly retry the handlers that may still retry).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from earnorm._config import EventConfig, RetryPolicy
from earnorm.events._broker.keys import Keys
from earnorm.events._handlers import Handler
from earnorm.events._wire import decode as protocol
from earnorm.events._wire import encode
from earnorm.events._wire.failures import FailureReason, HandlerFailure

Failures = list[tuple[Handler, HandlerFailure]]
ETA_SLACK_MS = 5.0  # an eta this close is run now rather than bounced through the delayed set


@dataclass(frozen=True, slots=True)
class Ack:
    """Handled: remove it from in-flight (after publishing its canvas follow-ups and storing
    ``result``, where those apply)."""

    result: Any = None


@dataclass(frozen=True, slots=True)
class Unhandled:
    """An event nobody subscribes to (``event_config.unhandled_events="skip"``): acknowledge
    it and count it as unhandled."""


@dataclass(frozen=True, slots=True)
class Defer:
    """Not due yet: move it to the delayed set until ``due_ms``, unchanged (or as
    ``envelope``: a rate limit's slot marked on it)."""

    due_ms: float
    ready_index: int
    envelope: bytes | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Schedule ``envelope`` (the retry message) at ``due_ms`` and ack the original."""

    envelope: bytes
    ready_index: int
    due_ms: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Move it to the failed store with ``reason``; with ``retry``, the handlers that may still
    retry are scheduled in the same transaction."""

    reason: FailureReason
    detail: str = ""
    failures: tuple[HandlerFailure, ...] = ()
    retry: Retry | None = None
    deliveries: int = 0  # for delivery_limit: how many times it was delivered
    died_holding: tuple[str, ...] = ()  # and the consumers that died holding it
    job_id: str | None = None  # for a message that could not be decoded but told its id
    name: str | None = None  # likewise, its task name


@dataclass(frozen=True, slots=True)
class Revoked:
    """Revoked (``"revoked"``: it never runs) or cancelled while it ran (``"terminated"``):
    acked, counted, REVOKED stored for a Celery client; never retried."""

    reason: str = "revoked"


Outcome = Ack | Unhandled | Defer | Retry | DeadLetter | Revoked


def handlers_to_run(
    message: protocol.Message, handlers: tuple[Handler, ...]
) -> tuple[Handler, ...]:
    """On a retry, only the handlers that have not succeeded yet (``earnorm_pending``); a
    renamed handler must not make the event vanish, so an unmatched list runs them all."""
    pending = message.headers.get(protocol.H_PENDING)
    if not isinstance(pending, list):
        return handlers
    return tuple(h for h in handlers if h.name in pending) or handlers


def delivery_limit(
    deliveries: int, died_holding: tuple[str, ...], config: EventConfig
) -> DeadLetter | None:
    """A message whose consumers died holding it ``max_deliveries`` times is not run again."""
    if deliveries <= config.max_deliveries:
        return None
    return DeadLetter(
        FailureReason.DELIVERY_LIMIT,
        f"delivered {deliveries} times (event_config.max_deliveries={config.max_deliveries}); "
        f"the consumer(s) {', '.join(died_holding) or '?'} died holding it",
        deliveries=deliveries, died_holding=died_holding,
    )


def before_running(
    message: protocol.Message, handlers: tuple[Handler, ...], now_ms: float, keys: Keys,
    config: EventConfig,
) -> Outcome | None:
    """Whether the message runs now (``None``) or what to do instead. An event nobody
    subscribes to is skipped, if the queue says so; a Celery task nobody runs is never
    dropped (it was sent to be run, and its client may wait for a result)."""
    if not handlers:
        if config.unhandled_events == "skip" and message.published_as_event:
            return Unhandled()
        return DeadLetter(FailureReason.NO_HANDLER, f"no handler registered for {message.task!r}")
    if message.expires is not None and message.expires.timestamp() * 1000 <= now_ms:
        return DeadLetter(
            FailureReason.EXPIRED, f"expired at {message.expires.isoformat()} before it could run"
        )
    if message.eta is not None:
        due_ms = message.eta.timestamp() * 1000
        if due_ms > now_ms + config.max_delay * 1000:
            return DeadLetter(
                FailureReason.ETA_OUT_OF_RANGE,
                f"eta {message.eta.isoformat()} is further away than event_config.max_delay "
                f"({config.max_delay:g} s)",
            )
        if due_ms > now_ms + ETA_SLACK_MS:
            # A Celery message with a future eta waits in Redis, never in our memory.
            return Defer(due_ms, keys.ready_index(message.priority))
    return None


def should_retry(handler: Handler, error: BaseException) -> bool:
    if handler.no_retry_on and isinstance(error, handler.no_retry_on):
        return False
    if handler.retry_on:
        return isinstance(error, handler.retry_on)
    return True


def plan_retries(
    message: protocol.Message, failures: Failures, default: RetryPolicy
) -> tuple[Failures, Failures, float]:
    """Split failures by each handler's own policy into (retry, gave up), and the delay of the
    retry: the longest of the retrying handlers' delays for this attempt."""
    retry: Failures = []
    gave_up: Failures = []
    for handler, failure in failures:
        policy = handler.retry_policy or default
        may_retry = message.retries < policy.max_retries and should_retry(
            handler, failure.error
        )
        (retry if may_retry else gave_up).append((handler, failure))
    delay_s = max(
        ((h.retry_policy or default).delay(message.retries) for h, _ in retry), default=0.0
    )
    return retry, gave_up, delay_s


def after_running(
    message: protocol.Message, failures: Failures, policy: RetryPolicy, now_ms: float, keys: Keys
) -> Outcome:
    """Each failed handler follows its own policy: the ones that may still retry go into one
    retry message (waiting the longest of their delays), the ones that gave up to the failed
    store; the consumer does both in the transaction that acks the message."""
    if not failures:
        return Ack()
    retry, gave_up, delay_s = plan_retries(message, failures, policy)
    scheduled = None
    if retry:
        due_ms = now_ms + delay_s * 1000
        envelope = encode.encode_retry(
            message, datetime.fromtimestamp(due_ms / 1000, UTC), [h.name for h, _ in retry]
        )
        scheduled = Retry(envelope, keys.ready_index(message.priority), due_ms)
    if not gave_up:
        assert scheduled is not None
        return scheduled
    return DeadLetter(FailureReason.HANDLER_ERROR, "", tuple(f for _, f in gave_up), scheduled)
