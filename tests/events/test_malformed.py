"""Malformed input never crashes, stalls or loses in our consumer (wire.md 9, plus a fuzzer).

Every bad message lands in ``Q:failed`` with a reason a human can act on; the good messages
around it keep flowing. Real Redis, real consumer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import orjson
import pytest
import redis as sync_redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from earnorm import Consumer, Event, HandlerRegistry
from earnorm._errors import EarnORMError, MessageDecodeError
from earnorm.events._wire import decode as protocol
from tests.helpers import wait_until

GOOD = "fuzz.ok"


def envelope(task: str = GOOD, task_id: str | None = None, **data: Any) -> dict[str, Any]:
    body = base64.b64encode(orjson.dumps([[data or {"n": 1}], {}, protocol.EMBED])).decode()
    return {
        "body": body, "content-encoding": "utf-8", "content-type": protocol.JSON,
        "headers": {"lang": "py", "task": task, "id": task_id or str(uuid.uuid4()),
                    "retries": 0, "eta": None, "expires": None},
        "properties": {"body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
                       "priority": 0, "delivery_info": {"exchange": "", "routing_key": "q"}},
    }


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def without(*path: str) -> Callable[[], bytes]:
    def make() -> bytes:
        env = envelope()
        target = env
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return dumps(env)
    return make


def with_body(payload: bytes, **changes: Any) -> Callable[[], bytes]:
    def make() -> bytes:
        env = envelope()
        env["body"] = base64.b64encode(payload).decode()
        env.update(changes)
        return dumps(env)
    return make


def changed(**changes: Any) -> Callable[[], bytes]:
    def make() -> bytes:
        env = envelope()
        for key, value in changes.items():
            section, _, field = key.partition("__")
            if field:
                env[section][field] = value
            else:
                env[section] = value
        return dumps(env)
    return make


# wire.md 9, one by one: (make raw, expected outcome, words the failure detail must contain).
WIRE9: dict[str, tuple[Callable[[], bytes], str, str]] = {
    "missing body": (without("body"), "undecodable", "'body'"),
    "missing content-type": (without("content-type"), "undecodable", "content-type"),
    "missing headers": (without("headers"), "undecodable", "headers"),
    "missing id": (without("headers", "id"), "undecodable", "headers.id"),
    "missing delivery_tag": (without("properties", "delivery_tag"), "handled", ""),
    "missing delivery_info": (without("properties", "delivery_info"), "handled", ""),
    "invalid base64": (changed(body="!!!not base64!!!"), "undecodable", "base64"),
    "bad JSON body": (with_body(b'[[1,2], {"a": '), "undecodable", "not valid application/json"),
    "element not JSON": (lambda: b"this is not json", "undecodable", "not JSON"),
    "element a JSON array": (lambda: b"[1, 2, 3]", "undecodable", "JSON object"),
    "unknown content type": (changed(**{"content-type": "application/x-yaml"}), "undecodable",
                             "application/x-yaml"),
    "pickle content type": (changed(**{"content-type": "application/x-python-serialize"}),
                            "undecodable", "refused"),
    "2-element body": (with_body(b"[[1], {}]"), "undecodable", "2 element"),
    "unknown task name": (lambda: dumps(envelope(task="no.such.task")), "no_handler",
                          "no.such.task"),
    # Beyond wire.md 9: more ways a peer can get it wrong.
    "invalid eta": (changed(headers__eta="tomorrow"), "undecodable", "eta"),
    "eta not a string": (changed(headers__eta=12), "undecodable", "eta"),
    "expired": (changed(headers__expires="2000-01-01T00:00:00+00:00"), "expired", "expired"),
    "unknown kombu tag": (with_body(b'[[{"__type__": "frob", "__value__": 1}], {}, null]'),
                          "undecodable", "frob"),
    "bad decimal tag": (with_body(b'[[{"__type__": "decimal", "__value__": "x"}], {}, null]'),
                        "undecodable", "decimal"),
    "unknown compression": (changed(headers__compression="application/x-snappy"),
                            "undecodable", "compression"),
    "compression header, plain body": (changed(headers__compression=protocol.ZLIB),
                                       "undecodable", "decompress"),
    "unknown body_encoding": (changed(properties__body_encoding="rot13"), "undecodable",
                              "body_encoding"),
    "properties not an object": (changed(properties=[1]), "undecodable", "properties"),
    "args not a list": (with_body(b'[{"a": 1}, {}, null]'), "undecodable", "args"),
    "embed not an object": (with_body(b"[[1], {}, 5]"), "undecodable", "embed"),
    "msgpack garbage": (with_body(b"\xc1\xc1", **{"content-type": protocol.MSGPACK}),
                        "undecodable", "msgpack"),
    "deep nesting": (with_body(b"[" * 5000 + b"]" * 5000), "undecodable", "depth"),
    "deep msgpack nesting": (
        with_body(b"\x93" + b"\x91" * 100_000 + b"\xc0\x80\xc0",
                  **{"content-type": protocol.MSGPACK}),
        "undecodable", "StackError"),
    "not UTF-8": (lambda: b'{"body": "\xff\xfe"}', "undecodable", "JSON"),
}


def registry_for(handled: list[Event]) -> HandlerRegistry:
    registry = HandlerRegistry()

    async def on_ok(event: Event) -> None:
        handled.append(event)

    registry.register(GOOD, on_ok)
    return registry


def _stored_as(raw: bytes) -> str:
    """How a failed record keeps the exact message: its text, or base64 if it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode()


async def _empty(redis: Redis, queue: str) -> bool:
    keys = [k async for k in redis.scan_iter(match=f"{queue}:inflight:*")]
    counts = [await redis.hlen(k) for k in keys] + [await redis.llen(queue)]
    return not any(counts)


@pytest.mark.anyio
async def test_every_spec9_variant_is_dead_lettered_with_a_reason_between_good_messages(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    handled: list[Event] = []
    raws = {name: make() for name, (make, _, _) in WIRE9.items()}
    good_ids = []
    for raw in raws.values():  # good, bad, good, bad, ... good
        good = envelope()
        good_ids.append(good["headers"]["id"])
        await redis.lpush(queue_name, dumps(good), raw)
    expected_handled = len(good_ids) + sum(o == "handled" for _, o, _ in WIRE9.values())
    expected_failed = len(WIRE9) - sum(o == "handled" for _, o, _ in WIRE9.values())
    async with Consumer(redis_url, queue_name=queue_name, registry=registry_for(handled),
                        concurrency=4) as consumer:
        await wait_until(lambda: len(handled) == expected_handled, 10, message="good messages")

        async def all_failed() -> bool:
            return await redis.hlen(f"{queue_name}:failed") == expected_failed

        await wait_until(all_failed, 10, message="bad messages in the failed store")
        jobs = {job.get("envelope") or job["envelope_base64"]: job
                for job in await consumer.bus.get_failed_jobs(limit=100)}
        await wait_until(lambda: _empty(redis, queue_name), 5, message="nothing left in flight")
        # Still alive and still working after all of it.
        late = envelope()
        await redis.lpush(queue_name, dumps(late))
        await wait_until(lambda: handled[-1].id == late["headers"]["id"], 5, message="one more")
    assert set(good_ids) <= {e.id for e in handled}
    for name, (_, outcome, words) in WIRE9.items():
        if outcome == "handled":
            continue
        job = jobs[_stored_as(raws[name])]
        assert job["reason"] == outcome, (name, job["detail"])
        assert words in job["detail"], (name, job["detail"])
    assert consumer.failed == expected_failed


@pytest.mark.anyio
async def test_bad_messages_do_not_slow_down_the_good_ones_much(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    bad_makers = [make for make, outcome, _ in WIRE9.values() if outcome != "handled"]

    async def drain(count_good: int, with_bad: bool) -> float:
        handled: list[Event] = []
        raws = []
        for i in range(count_good):
            raws.append(dumps(envelope(n=i)))
            if with_bad:
                raws.append(bad_makers[i % len(bad_makers)]())
        for start in range(0, len(raws), 500):
            await redis.lpush(queue_name, *raws[start:start + 500])
        began = time.monotonic()
        async with Consumer(redis_url, queue_name=queue_name, registry=registry_for(handled),
                            concurrency=50):
            await wait_until(lambda: len(handled) == count_good, 60, message="good messages")
        return time.monotonic() - began

    alone = await drain(1000, with_bad=False)
    mixed = await drain(1000, with_bad=True)
    assert mixed < 4 * alone + 2.0, (alone, mixed)


# ------------------------------------------------------------------ fuzzing

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                               max_size=4),
    max_leaves=10,
)
_tag = st.fixed_dictionaries({
    "__type__": st.sampled_from(["datetime", "date", "time", "decimal", "uuid", "bytes",
                                 "base64", "nope"]) | st.text(max_size=6),
    "__value__": _json,
})
# A future eta within max_delay (a year) is held; one beyond it (2999) is dead-lettered.
_SOON = (datetime.now(UTC) + timedelta(days=30)).isoformat()
_when: st.SearchStrategy[Any] = st.sampled_from([
    None, "2000-01-01T00:00:00+00:00", "2000-01-01T00:00:00", "2999-01-01T00:00:00Z", _SOON,
    "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "tomorrow", "", 5, [],
])
_payload = st.one_of(
    st.tuples(st.lists(_json | _tag, max_size=3), st.dictionaries(st.text(max_size=5),
              _json | _tag, max_size=3), st.none() | st.just({}) | _json).map(list),
    st.lists(_json, max_size=5),
    _json,
    st.fixed_dictionaries({"args": _json, "kwargs": _json}),
)


def _mostly(valid: Any, bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` four times in five, else something from ``bad``: most examples stay close
    enough to a real message to reach the deeper paths (eta, tags, handlers)."""
    return st.integers(0, 4).flatmap(lambda i: bad if i == 0 else st.just(valid))


@st.composite
def _raw_messages(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 19)) == 0:
        return draw(st.binary(max_size=64))
    payload = draw(_mostly(None, _payload)) or [[{"n": 1}], {}, None]
    content_type = draw(_mostly(protocol.JSON, st.sampled_from(
        [protocol.MSGPACK, "application/x-yaml", "application/x-python-serialize", "text/plain"])))
    try:
        data = (msgpack.packb(payload, use_bin_type=True) if content_type == protocol.MSGPACK
                else orjson.dumps(payload))
    except (TypeError, ValueError):
        data = b"\x00"
    data = draw(_mostly(data, st.binary(max_size=32)))
    headers: dict[str, Any] = {
        "task": draw(_mostly(GOOD, st.sampled_from(["no.such.task", "", 7, None]))),
        "id": draw(_mostly("UNIQUE", st.sampled_from(["", None, 3]))),
        "eta": draw(_mostly(None, _when)), "expires": draw(_mostly(None, _when)),
        "retries": draw(_mostly(0, _json)), "priority": draw(_mostly(0, _json)),
    }
    for key in ("earnorm_metadata", "earnorm_timestamp", "earnorm_version", "group",
                "group_index"):
        value = draw(_mostly(None, _when | _json))
        if value is not None:
            headers[key] = value
    encoding = draw(_mostly("base64", st.sampled_from([None, "rot13"])))
    compression = draw(_mostly(None, st.sampled_from(
        [protocol.ZLIB, protocol.ZLIB, "application/x-bz2", "application/x-nope"])))
    if compression is not None:
        headers["compression"] = compression
        if compression == protocol.ZLIB and draw(st.booleans()):
            data = zlib.compress(data)
    if encoding == "base64":
        body: Any = base64.b64encode(data).decode()
    else:
        body = data.decode("utf-8", "replace")
    envelope_: dict[str, Any] = {
        "body": body, "content-type": content_type, "content-encoding": "utf-8",
        "headers": headers,
        "properties": {"body_encoding": encoding, "delivery_tag": "t",
                       "priority": draw(_mostly(0, _json)),
                       "delivery_info": {"exchange": "", "routing_key": "q"}},
    }
    for key in draw(_mostly([], st.lists(st.sampled_from(list(envelope_)), max_size=2,
                                         unique=True))):
        if draw(st.booleans()):
            del envelope_[key]
        else:
            envelope_[key] = draw(_json)
    return orjson.dumps(envelope_)


def _with_unique_id(raw: bytes, counter: int) -> bytes:
    return raw.replace(b'"UNIQUE"', b'"fuzz-%d-%s"' % (counter, uuid.uuid4().hex.encode()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_raw_messages())
def test_decode_raises_only_message_decode_error_and_decoded_messages_map_to_events(
    raw: bytes,
) -> None:
    try:
        message = protocol.decode(_with_unique_id(raw, 0))
    except MessageDecodeError as exc:
        assert str(exc)
        return
    for when in (message.eta, message.expires):
        if when is not None:
            when.timestamp()  # the consumer compares these with now
    with contextlib.suppress(EarnORMError):  # the consumer dead-letters these
        message.to_event()


class ThreadedConsumer:
    """A consumer running on its own event loop in a thread, so a synchronous hypothesis test
    can feed it one example at a time."""

    def __init__(self, redis_url: str, queue: str) -> None:
        self.handled: list[Event] = []
        self.error: BaseException | None = None
        self.consumer = Consumer(redis_url, queue_name=queue, registry=registry_for(self.handled),
                                 concurrency=4)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self._started.wait(20):
            raise AssertionError(f"fuzz consumer did not start: {self.error!r}")

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            async with self.consumer:
                self._started.set()
                await self.consumer._stopped.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
            self._started.set()

    def alive(self) -> bool:
        return self.thread.is_alive() and self.error is None

    def stop(self) -> None:
        if self._loop is not None and self.thread.is_alive():
            self._loop.call_soon_threadsafe(self.consumer.stop)
        self.thread.join(30)


@pytest.fixture(scope="module")
def fuzz_target(redis_url: str) -> Iterator[tuple[ThreadedConsumer, sync_redis.Redis, str]]:
    queue = f"test:fuzz:{uuid.uuid4().hex[:8]}"
    consumer = ThreadedConsumer(redis_url, queue)
    client = sync_redis.Redis.from_url(redis_url)
    try:
        yield consumer, client, queue
    finally:
        consumer.stop()
        keys = list(client.scan_iter(match=f"{queue}*"))
        if keys:
            client.delete(*keys)
        client.close()


_counter = iter(range(1, 10**9))


def _example(**headers: Any) -> bytes:
    env = envelope(task_id="UNIQUE")
    env["headers"].update(headers)
    return dumps(env)


# Always run, whatever hypothesis draws: one message of each outcome.
_HANDLED, _DELAYED = _example(), _example(eta=_SOON)
_FAILED = _example(eta="tomorrow")


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=_raw_messages())
@example(raw=_HANDLED)
@example(raw=_DELAYED)
@example(raw=_FAILED)
def test_consumer_accounts_for_every_fuzzed_message_and_survives(
    fuzz_target: tuple[ThreadedConsumer, sync_redis.Redis, str], raw: bytes,
) -> None:
    """Each message is handled once, held for a future eta, skipped as an event nobody
    subscribes to, or dead-lettered: never lost, never looped, never fatal. (A hypothesis run
    may replay an example: counts are deltas.)"""
    target, client, queue = fuzz_target
    before = (len(target.handled), client.hlen(f"{queue}:failed"),
              client.zcard(f"{queue}:delayed"), target.consumer.unhandled)
    client.lpush(queue, _with_unique_id(raw, next(_counter)))
    deadline = time.monotonic() + 10
    while True:
        after = (len(target.handled), client.hlen(f"{queue}:failed"),
                 client.zcard(f"{queue}:delayed"), target.consumer.unhandled)
        in_flight = sum(client.hlen(k) for k in client.scan_iter(match=f"{queue}:inflight:*"))
        settled = sum(after) - sum(before)
        if settled and not in_flight and not client.llen(queue):
            break
        assert target.alive(), f"consumer died: {target.error!r}"
        assert time.monotonic() < deadline, f"message not settled: {after} vs {before}"
        time.sleep(0.002)
    assert settled == 1, (before, after)
    assert target.alive(), f"consumer died: {target.error!r}"
    for record in client.hvals(f"{queue}:failed")[-1:]:
        job = orjson.loads(record)
        assert job["reason"] and job["detail"], job


def test_fuzz_consumer_still_runs_good_messages_afterwards(
    fuzz_target: tuple[ThreadedConsumer, sync_redis.Redis, str],
) -> None:
    target, client, queue = fuzz_target
    good = envelope()
    client.lpush(queue, dumps(good))
    deadline = time.monotonic() + 5
    while good["headers"]["id"] not in {e.id for e in target.handled}:
        assert time.monotonic() < deadline and target.alive(), target.error
        time.sleep(0.01)
    assert datetime.now(UTC) - timedelta(minutes=5) < target.handled[-1].timestamp
    # Every outcome was reached: handled, dead-lettered, and held for a future eta.
    assert len(target.handled) > 1
    assert client.hlen(f"{queue}:failed") and client.zcard(f"{queue}:delayed")
