"""Retries: exact attempt counts and schedules, per-handler policies, timeouts, partial fan-out."""

from __future__ import annotations

import itertools
import time
from typing import Any

import anyio
import orjson
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from earnorm._config import RetryPolicy
from earnorm._errors import ConfigError
from earnorm.events._broker.keys import split_delayed_member
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

NO_RETRY = {"max_retries": 0}


@pytest.fixture
def bus_config() -> dict[str, Any]:
    return {"retry_policy": NO_RETRY}


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def sentinel_seen(bus: EventBus, seen: list[str]) -> None:
    """Publish a marker and wait for it: with concurrency=1 and FIFO, anything queued before it
    (a duplicate, say) has run by then. Proves "exactly once" without sleeping."""
    marker = await bus.publish(Event(name="test.sentinel"))
    await wait_until(lambda: marker in seen, 10, message="the sentinel event")


# ---------------------------------------------------------------- policy objects


def test_exponential_policy_grows_then_caps() -> None:
    policy = RetryPolicy.from_dict(
        {"strategy": "exponential", "max_retries": 6, "base": 0.5, "factor": 3, "max_delay": 10}
    )
    assert [policy.delay(n) for n in range(5)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_exponential_jitter_stays_within_its_share() -> None:
    policy = RetryPolicy.from_dict(
        {"strategy": "exponential", "base": 1, "factor": 2, "max_delay": 60, "jitter": 0.5}
    )
    delays = [policy.delay(3) for _ in range(500)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert max(delays) - min(delays) > 2  # it does spread them


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = RetryPolicy(strategy="exponential", base=1, factor=10, max_delay=30)
    assert policy.delay(10_000) == 30.0


@pytest.mark.parametrize(("raw", "message"), [
    ({"strategy": "linear"}, "retry_policy.strategy must be 'interval' or 'exponential'"),
    ({"strategy": "exponential", "factor": 0.5}, "retry_policy.factor must be >= 1"),
    ({"strategy": "exponential", "jitter": 1.5}, "retry_policy.jitter must be <= 1"),
    ({"strategy": "exponential", "base": "1s"}, "retry_policy.base must be a number"),
    ({"strategy": "exponential", "max_delay": -1}, "retry_policy.max_delay must be >= 0"),
    ({"strategy": "exponential", "interval_step": 1}, "unknown key(s) in retry_policy: "
                                                      "interval_step"),
    ({"base": 1}, "unknown key(s) in retry_policy: base"),
])
def test_policy_errors_name_the_field(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RetryPolicy.from_dict(raw)
    assert message in str(caught.value)


def test_handler_options_are_validated() -> None:
    registry = HandlerRegistry()

    async def handler(event: Event) -> None: ...

    with pytest.raises(ConfigError, match=r"retry_policy\.max_retries"):
        registry.register("a.b", handler, retry_policy={"max_retries": -1})
    with pytest.raises(ConfigError, match="retry_on must be a tuple of exception classes"):
        registry.register("a.b", handler, retry_on=(ValueError, "nope"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
        registry.register("a.b", handler, batch_size=0)
    with pytest.raises(ConfigError, match="batch_timeout must be a positive number"):
        registry.register("a.b", handler, batch_size=2, batch_timeout=0)


# ---------------------------------------------------------------- schedules on real Redis


async def attempts_until_dead_lettered(
    bus: EventBus, redis: Redis, policy: dict[str, Any]
) -> tuple[list[float], str]:
    """Run an always-failing handler with ``policy`` until its event is dead-lettered;
    returns when each attempt started, and the job id."""
    attempts: list[float] = []
    registry = HandlerRegistry()

    async def always_fails(event: Event) -> None:
        attempts.append(time.monotonic())
        raise ValueError(f"attempt {len(attempts)}")

    registry.register("order.paid", always_fails, retry_policy=policy)
    async with Consumer(bus=bus, registry=registry, concurrency=1):
        job_id = await bus.publish(Event(name="order.paid"))
        failed = f"{bus.config.queue_name}:failed"
        await wait_until(lambda: redis.hexists(failed, job_id), 10)
    return attempts, job_id


def assert_schedule(attempts: list[float], expected_gaps: list[float]) -> None:
    assert len(attempts) == len(expected_gaps) + 1
    for gap, want in zip(gaps(attempts), expected_gaps, strict=True):
        assert want - 0.01 <= gap < want + 0.25, (gaps(attempts), expected_gaps)


async def test_handler_policy_overrides_the_queue_policy_with_exact_schedule(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    # The queue allows no retries; the handler's own policy allows 3: 0.2, 0.4, then capped 0.5.
    attempts, job_id = await attempts_until_dead_lettered(bus, redis, {
        "max_retries": 3, "interval_start": 0.2, "interval_step": 0.2, "interval_max": 0.5,
    })
    assert_schedule(attempts, [0.2, 0.4, 0.5])
    job = await bus.get_failed_job(job_id)
    assert job["attempts"] == 4
    assert job["error"] == "attempt 4"
    # Dead-lettered atomically with its ack: nothing left delayed or ready, or in flight.
    assert await redis.zcard(f"{queue_name}:delayed") == 0
    assert await redis.llen(queue_name) == 0
    assert not [k async for k in redis.scan_iter(match=f"{queue_name}:inflight:*")]


async def test_exponential_policy_schedule_on_real_redis(bus: EventBus, redis: Redis) -> None:
    attempts, _ = await attempts_until_dead_lettered(bus, redis, {
        "strategy": "exponential", "max_retries": 3, "base": 0.1, "factor": 3, "max_delay": 0.5,
    })
    assert_schedule(attempts, [0.1, 0.3, 0.5])


async def test_retry_is_a_celery_message_scheduled_with_the_ack(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    registry = HandlerRegistry()
    calls: list[str] = []

    async def fails(event: Event) -> None:
        calls.append(event.id)
        raise ValueError("later")

    registry.register("user.sync", fails, retry_policy={"max_retries": 5, "interval_start": 60,
                                                         "interval_max": 120})
    async with Consumer(bus=bus, registry=registry) as consumer:
        job_id = await bus.publish(Event(name="user.sync", data={"id": 1}))
        await wait_until(lambda: redis.zcard(f"{queue_name}:delayed"), 10)
        inflight = await redis.hlen(f"{queue_name}:inflight:{consumer.consumer_id}")
    assert calls == [job_id]
    assert inflight == 0
    delayed: Any = await redis.zrange(f"{queue_name}:delayed", 0, -1, withscores=True)
    [(member, due_ms)] = delayed
    _, raw = split_delayed_member(member)
    headers = orjson.loads(raw)["headers"]
    assert headers["id"] == job_id and headers["parent_id"] == job_id
    assert headers["retries"] == 1
    assert headers["task"] == "user.sync"
    assert abs(due_ms / 1000 - time.time() - 60) < 5
    assert headers["eta"].startswith(time.strftime("%Y-", time.gmtime(due_ms / 1000)))
    assert (await bus.stats())["counters"]["retried"] == 1


async def test_no_retry_on_and_retry_on_decide_per_error(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    calls: dict[str, int] = {}
    registry = HandlerRegistry()
    policy = {"max_retries": 2, "interval_start": 0.05, "interval_step": 0}

    async def picky(event: Event) -> None:
        calls[event.data["raise"]] = calls.get(event.data["raise"], 0) + 1
        raise {"value": ValueError, "conn": ConnectionError, "key": KeyError}[
            event.data["raise"]
        ]("x")

    registry.register("a.picky", picky, retry_policy=policy,
                      retry_on=(ConnectionError, KeyError), no_retry_on=(KeyError,))
    async with Consumer(bus=bus, registry=registry):
        ids = [await bus.publish(Event(name="a.picky", data={"raise": kind}))
               for kind in ("value", "conn", "key")]
        await wait_until(lambda: redis.hlen(f"{queue_name}:failed"), 10)
        await wait_until(lambda: _count_failed(redis, queue_name, 3), 10, message="3 failed")
    # ValueError: not in retry_on. KeyError: no_retry_on wins. ConnectionError: retried twice.
    assert calls == {"value": 1, "conn": 3, "key": 1}
    attempts = [(await bus.get_failed_job(i))["attempts"] for i in ids]
    assert attempts == [1, 3, 1]


async def _count_failed(redis: Redis, queue_name: str, n: int) -> bool:
    return await redis.hlen(f"{queue_name}:failed") == n


async def test_a_handler_that_overruns_its_timeout_fails_and_is_retried(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    durations: list[float] = []
    registry = HandlerRegistry()

    async def slow(event: Event) -> None:
        started = time.monotonic()
        try:
            await anyio.sleep(30)
        finally:
            durations.append(time.monotonic() - started)

    registry.register("report.build", slow, timeout=0.2,
                      retry_policy={"max_retries": 1, "interval_start": 0.05})
    async with Consumer(bus=bus, registry=registry):
        job_id = await bus.publish(Event(name="report.build"))
        await wait_until(lambda: redis.hexists(f"{queue_name}:failed", job_id), 10)
    assert len(durations) == 2
    assert all(0.19 <= d < 1.0 for d in durations), durations
    job = await bus.get_failed_job(job_id)
    assert job["error_type"] == "HandlerTimeout"
    assert "ran longer than its timeout of 0.2s" in (job["error"] or "")
    assert job["attempts"] == 2


# ---------------------------------------------------------------- several handlers


async def test_retry_reruns_only_the_handlers_that_failed(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    runs: dict[str, int] = {"ok": 0, "flaky": 0, "broken": 0}
    seen: list[str] = []
    registry = HandlerRegistry()
    policy = {"max_retries": 2, "interval_start": 0.05, "interval_step": 0}

    async def ok(event: Event) -> None:
        runs["ok"] += 1

    async def flaky(event: Event) -> None:
        runs["flaky"] += 1
        if runs["flaky"] < 3:
            raise ConnectionError("not yet")

    async def broken(event: Event) -> None:
        runs["broken"] += 1
        raise ValueError("always")

    async def sentinel(event: Event) -> None:
        seen.append(event.id)

    for handler in (ok, flaky, broken):
        registry.register("invoice.sent", handler, retry_policy=policy, name=handler.__name__)
    registry.register("test.sentinel", sentinel)
    async with Consumer(bus=bus, registry=registry, concurrency=1):
        job_id = await bus.publish(Event(name="invoice.sent"))
        await wait_until(lambda: redis.hexists(f"{queue_name}:failed", job_id), 10)
        assert runs == {"ok": 1, "flaky": 3, "broken": 3}
        job = await bus.get_failed_job(job_id)
        assert job["handlers"] == ["broken"]
        assert [e["handler"] for e in job["errors"]] == ["broken"]

        await bus.retry_job(job_id)  # only the handler that gave up runs again
        await wait_until(lambda: redis.hexists(f"{queue_name}:failed", job_id), 10)
        await sentinel_seen(bus, seen)
    assert runs == {"ok": 1, "flaky": 3, "broken": 6}


async def test_handlers_give_up_on_their_own_policies_and_share_one_record(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    runs: dict[str, int] = {"once": 0, "thrice": 0}
    registry = HandlerRegistry()

    async def once(event: Event) -> None:
        runs["once"] += 1
        raise ValueError("once")

    async def thrice(event: Event) -> None:
        runs["thrice"] += 1
        raise ValueError("thrice")

    registry.register("doc.saved", once, retry_policy={"max_retries": 0}, name="once")
    registry.register("doc.saved", thrice, name="thrice",
                      retry_policy={"max_retries": 2, "interval_start": 0.3, "interval_step": 0})
    async with Consumer(bus=bus, registry=registry, concurrency=1):
        job_id = await bus.publish(Event(name="doc.saved"))
        # "once" gave up at once, while "thrice" still waits for its retries.
        await wait_until(lambda: redis.hexists(f"{queue_name}:failed", job_id), 10)
        early = await bus.get_failed_job(job_id)
        assert early["handlers"] == ["once"]
        assert await redis.zcard(f"{queue_name}:delayed") == 1
        await wait_until(lambda: runs["thrice"] == 3, 10, message="the last retry")
        await wait_until(lambda: _handlers_are(bus, job_id, ["once", "thrice"]), 10)
    job = await bus.get_failed_job(job_id)
    assert runs == {"once": 1, "thrice": 3}
    assert job["attempts"] == 3
    assert job["first_failed_at"] == early["first_failed_at"]
    assert {e["handler"] for e in job["errors"]} == {"once", "thrice"}
    assert len(await bus.get_failed_jobs()) == 1


async def _handlers_are(bus: EventBus, job_id: str, handlers: list[str]) -> bool:
    return bool((await bus.get_failed_job(job_id))["handlers"] == handlers)


async def test_retry_job_runs_the_event_exactly_once_more(
    bus: EventBus, redis: Redis, queue_name: str
) -> None:
    handled: list[str] = []
    seen: list[str] = []
    failing = True
    registry = HandlerRegistry()

    async def flaky(event: Event) -> None:
        if failing:
            raise RuntimeError("down")
        handled.append(event.id)

    async def sentinel(event: Event) -> None:
        seen.append(event.id)

    registry.register("mail.send", flaky)
    registry.register("test.sentinel", sentinel)
    async with Consumer(bus=bus, registry=registry, concurrency=1):
        job_id = await bus.publish(Event(name="mail.send"))
        await wait_until(lambda: redis.hexists(f"{queue_name}:failed", job_id), 10)
        failing = False
        assert await bus.retry_job(job_id) == job_id
        assert not await redis.hexists(f"{queue_name}:failed", job_id)
        await wait_until(lambda: handled == [job_id], 10, message="the retried job")
        await sentinel_seen(bus, seen)
    assert handled == [job_id]
    assert await bus.get_failed_jobs() == []
