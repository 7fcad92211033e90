"""Every message captured from real Celery (``tests/interop/samples``, written by
``scripts/capture_celery_wire.py``) replayed into our consumer: each is handled, held for its
eta, or dead-lettered, as docs/wire.md says.

Where Celery itself loses a message for want of ``delivery_tag``/``delivery_info`` (wire.md 9) we
do not need those fields and run it; everything a worker rejects, discards or crashes on lands
in our failed store with a reason. The outcome we owe for each hand-made variant is recorded
beside it in ``handcrafted_variants.json``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from earnorm import Consumer, Event, HandlerRegistry
from earnorm._config import EventConfig
from earnorm.events._wire.decode import decode
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

SAMPLES = Path(__file__).resolve().parent / "samples"
OUTCOMES = {"handled", "undecodable", "no_handler", "expired"}
MAX_DELAY_S = EventConfig().max_delay


def variants() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SAMPLES / "handcrafted_variants.json").read_text())
    return dict(loaded["variants"])


@dataclass
class Case:
    name: str
    raw: bytes
    expected: str  # handled | delayed | undecodable | no_handler | expired | eta_out_of_range


def _when(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _timed_outcome(raw: bytes) -> str:
    """Captured etas/expires are absolute times: what they mean depends on when we replay."""
    headers = orjson.loads(raw).get("headers") or {}
    now = time.time()
    expires, eta = _when(headers.get("expires")), _when(headers.get("eta"))
    if expires is not None and expires <= now - 5:
        return "expired"
    if expires is not None and expires <= now + 30:
        return "skip"  # too close to call either way while the suite runs
    if eta is not None and eta > now + MAX_DELAY_S + 60:
        return "eta_out_of_range"  # e.g. send_task(eta=2030-...): dead-lettered, not kept forever
    if eta is not None and eta > now + MAX_DELAY_S - 60:
        return "skip"
    if eta is not None and eta > now + 60:
        return "delayed"
    if eta is not None and eta > now - 5:
        return "skip"  # too close to call either way while the suite runs
    return "handled"


def cases() -> list[Case]:
    out = []
    for path in sorted(SAMPLES.glob("*.raw.json")):
        name = path.name.removesuffix(".raw.json")
        raw = path.read_bytes()
        if name == "worker_unacked_entry":
            raw = orjson.dumps(orjson.loads(raw)[0])
        out.append(Case(name, raw, _timed_outcome(raw)))
    for name, variant in variants().items():
        raw = variant["raw"].encode()
        ran = variant["celery"]["task_executed"]
        expected = _timed_outcome(raw) if ran else variant["earnorm"]
        out.append(Case(f"variant:{name}", raw, expected))
    return [c for c in out if c.expected != "skip"]


def test_every_variant_has_an_outcome_and_what_celery_ran_we_run() -> None:
    found = variants()
    assert len(found) >= 30
    for name, variant in found.items():
        assert variant["earnorm"] in OUTCOMES, name
        if variant["celery"]["task_executed"]:
            assert variant["earnorm"] == "handled", name
    # The ones that take a real worker down must be among them (docs/wire.md section 9).
    crashed = {n for n, v in found.items() if not v["celery"]["worker_alive_afterwards"]}
    assert {"min_no_content_type", "min_body_two_elements", "envelope_not_json"} <= crashed


async def test_captured_messages_are_handled_or_dead_lettered_as_spec_says(
    redis_url: str, queue_name: str, redis: Redis
) -> None:
    replay = cases()
    assert len(replay) > 50
    handled: Counter[str] = Counter()
    registry = HandlerRegistry()

    async def record(event: Event) -> None:
        handled[event.id] += 1

    for name in ("user.created", "route.me", "retry.me", "retry.default"):
        registry.register(name, record, name=f"replay:{name}")
    for case in replay:
        await redis.lpush(queue_name, case.raw)
    expected_failed = [c for c in replay if c.expected not in ("handled", "delayed")]
    expected_handled = Counter(
        orjson.loads(c.raw)["headers"]["id"] for c in replay if c.expected == "handled")
    # What a Celery worker publishes after a success runs too: link callbacks, a chain's step.
    follow_ups = sum(_follow_ups(c.raw) for c in replay if c.expected == "handled")
    assert follow_ups >= 2, "the link and chain samples are carried on"
    expected_delayed = sum(c.expected == "delayed" for c in replay)
    async with Consumer(redis_url, queue_name=queue_name, registry=registry,
                        concurrency=8) as consumer:

        async def settled() -> bool:
            return (sum(handled.values()) == expected_handled.total() + follow_ups
                    and await redis.hlen(f"{queue_name}:failed") == len(expected_failed)
                    and await redis.zcard(f"{queue_name}:delayed") == expected_delayed)

        async def progress() -> str:
            return (f"handled {sum(handled.values())}/{expected_handled.total() + follow_ups}, "
                    "failed "
                    f"{await redis.hlen(f'{queue_name}:failed')}/{len(expected_failed)}, delayed "
                    f"{await redis.zcard(f'{queue_name}:delayed')}/{expected_delayed}")

        try:
            await wait_until(settled, 20, message="every replayed message settled")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {await progress()}") from None
        jobs = await consumer.bus.get_failed_jobs(limit=100)
    assert Counter({i: n for i, n in handled.items() if i in expected_handled}) == (
        expected_handled)
    by_envelope = {job["envelope"]: job for job in jobs}
    for case in expected_failed:
        job = by_envelope[case.raw.decode()]
        assert job["reason"] == case.expected, (case.name, job["detail"])
        assert job["detail"], case.name
    assert await redis.llen(queue_name) == 0


def _follow_ups(raw: bytes) -> int:
    """Callbacks and chain steps a success of this message publishes (all to handled tasks)."""
    embed = decode(raw).embed or {}
    return len(embed.get("callbacks") or ()) + (1 if embed.get("chain") else 0)
