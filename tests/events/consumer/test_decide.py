"""The consumer's decisions, pure: no Redis, no clock but the one passed in."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from earnorm import Event, FailureReason, Handler
from earnorm._config import EventConfig, RetryPolicy
from earnorm.events._broker.keys import Keys
from earnorm.events._wire import decode as protocol
from earnorm.events._wire.failures import HandlerFailure
from earnorm.events.consumer import _decide as decide

CONFIG = EventConfig(queue_name="q", max_deliveries=5, max_delay=3600)
KEYS = Keys.for_queue(CONFIG)
NOW_MS = 1_800_000_000_000.0
POLICY = RetryPolicy(max_retries=2, interval_start=1, interval_step=2, interval_max=10)


async def noop(event: Event) -> None:
    return None


def handler(name: str, **options: Any) -> Handler:
    return Handler(name=name, pattern="a.b", func=noop, **options)


def message(**headers: Any) -> protocol.Message:
    body = base64.b64encode(orjson.dumps([[{"k": 1}], {}, None])).decode()
    return protocol.decode(orjson.dumps({
        "body": body, "content-type": protocol.JSON, "content-encoding": "utf-8",
        "headers": {"task": "a.b", "id": "id-1", **headers},
        "properties": {"body_encoding": "base64", "priority": headers.pop("_priority", 0)},
    }))


def iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def failed(*handlers: Handler) -> decide.Failures:
    return [(h, HandlerFailure(h.name, ValueError("boom"))) for h in handlers]


def test_no_handler_dead_letters_naming_the_task() -> None:
    outcome = decide.before_running(message(), (), NOW_MS, KEYS, CONFIG)
    assert outcome == decide.DeadLetter(FailureReason.NO_HANDLER,
                                        "no handler registered for 'a.b'")


def test_an_expired_message_dead_letters_and_one_not_yet_expired_runs() -> None:
    h = (handler("h"),)
    expired = decide.before_running(message(expires=iso(NOW_MS - 1)), h, NOW_MS, KEYS, CONFIG)
    assert isinstance(expired, decide.DeadLetter) and expired.reason is FailureReason.EXPIRED
    later = decide.before_running(message(expires=iso(NOW_MS + 1000)), h, NOW_MS, KEYS, CONFIG)
    assert later is None


def test_a_future_eta_is_deferred_to_its_priority_list_and_a_near_one_runs_now() -> None:
    h = (handler("h"),)
    later = decide.before_running(message(eta=iso(NOW_MS + 60_000), _priority=6), h, NOW_MS,
                                  KEYS, CONFIG)
    assert later == decide.Defer(NOW_MS + 60_000, KEYS.ready_index(6))
    near = NOW_MS + decide.ETA_SLACK_MS / 2
    assert decide.before_running(message(eta=iso(near)), h, NOW_MS, KEYS, CONFIG) is None


def test_a_retry_runs_only_the_handlers_still_pending() -> None:
    a, b = handler("a"), handler("b")
    assert decide.handlers_to_run(message(), (a, b)) == (a, b)
    assert decide.handlers_to_run(message(**{protocol.H_PENDING: ["b"]}), (a, b)) == (b,)
    # A pending list that matches nothing (a renamed handler) must not make the event vanish.
    assert decide.handlers_to_run(message(**{protocol.H_PENDING: ["gone"]}), (a, b)) == (a, b)


def test_success_acks() -> None:
    assert decide.after_running(message(), [], POLICY, NOW_MS, KEYS) == decide.Ack()


@pytest.mark.parametrize(("retries", "delay_s"), [(0, 1), (1, 3)])
def test_a_failure_with_retries_left_is_retried_after_the_policy_delay(
    retries: int, delay_s: float
) -> None:
    b = handler("b")  # of handlers a and b, a succeeded
    outcome = decide.after_running(message(retries=retries), failed(b), POLICY, NOW_MS, KEYS)
    assert isinstance(outcome, decide.Retry)
    assert outcome.due_ms == NOW_MS + delay_s * 1000
    retry = protocol.decode(outcome.envelope)
    assert (retry.id, retry.retries) == ("id-1", retries + 1)
    assert retry.headers[protocol.H_PENDING] == ["b"], "a, which succeeded, does not run again"
    assert retry.eta == datetime.fromtimestamp(outcome.due_ms / 1000, UTC)


def test_retries_exhausted_dead_letter_with_the_handlers_failures() -> None:
    b = handler("b")
    outcome = decide.after_running(message(retries=2), failed(b), POLICY, NOW_MS, KEYS)
    assert isinstance(outcome, decide.DeadLetter)
    assert outcome.reason is FailureReason.HANDLER_ERROR
    assert [f.handler for f in outcome.failures] == ["b"]
    assert outcome.retry is None


def test_handlers_with_their_own_policies_split_into_retry_and_dead_letter() -> None:
    patient = handler("patient", retry_policy=RetryPolicy(max_retries=5, interval_start=7,
                                                          interval_step=0, interval_max=7))
    impatient = handler("impatient", retry_policy=RetryPolicy(max_retries=0))
    outcome = decide.after_running(message(), failed(patient, impatient), POLICY, NOW_MS, KEYS)
    assert isinstance(outcome, decide.DeadLetter)
    assert [f.handler for f in outcome.failures] == ["impatient"]
    assert outcome.retry is not None and outcome.retry.due_ms == NOW_MS + 7000
    assert protocol.decode(outcome.retry.envelope).headers[protocol.H_PENDING] == ["patient"]


def test_no_retry_on_gives_up_at_once() -> None:
    h = handler("h", no_retry_on=(ValueError,))
    outcome = decide.after_running(message(), failed(h), POLICY, NOW_MS, KEYS)
    assert isinstance(outcome, decide.DeadLetter) and outcome.retry is None


def test_an_eta_further_than_max_delay_dead_letters_and_one_within_it_is_deferred() -> None:
    h = (handler("h"),)
    far = decide.before_running(message(eta="9999-12-31T23:59:59+00:00"), h, NOW_MS, KEYS,
                                CONFIG)
    assert isinstance(far, decide.DeadLetter)
    assert far.reason is FailureReason.ETA_OUT_OF_RANGE
    assert "9999-12-31" in far.detail and "max_delay (3600 s)" in far.detail
    within = decide.before_running(message(eta=iso(NOW_MS + 3_599_000)), h, NOW_MS, KEYS,
                                   CONFIG)
    assert isinstance(within, decide.Defer)


def test_the_delivery_limit_names_the_consumers_that_died_holding_it() -> None:
    assert decide.delivery_limit(5, ("c-1", "c-2", "c-3", "c-4"), CONFIG) is None
    limit = decide.delivery_limit(6, ("c-1", "c-2", "c-3", "c-4", "c-5"), CONFIG)
    assert limit is not None and limit.reason is FailureReason.DELIVERY_LIMIT
    assert limit.deliveries == 6 and limit.died_holding == ("c-1", "c-2", "c-3", "c-4", "c-5")
    assert "max_deliveries=5" in limit.detail and "c-1, c-2" in limit.detail
