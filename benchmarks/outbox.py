"""The transactional outbox: relay throughput, and commit-to-handler latency next to a direct
publish's publish-to-handler latency.

    .venv/bin/python -m benchmarks.outbox            # ~1 min on 2 cores
    .venv/bin/python -m benchmarks.outbox --quick

Servers: a private Redis and the tests' MongoDB-wire server (jongodb, a single-node replica set;
``MONGODB_URI`` uses a real one). Throughput: N events committed in transactions of 100 with the
relay off, then one relay started; events/s until none is pending. Latency: a transaction per
event (a document created and its model event dispatched) at a steady rate, a consumer in the
same process; from the end of the ``async with earnorm.transaction()`` block to the handler's
start. The baseline is the same create and event without a transaction (published directly).
Results: ``benchmarks/results/outbox.md`` and ``outbox.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import earnorm  # noqa: E402
from earnorm import (  # noqa: E402
    BaseModel,
    Consumer,
    Event,
    HandlerRegistry,
    dispatch_model_event,
    start_local_redis,
)
from earnorm._outbox import OutboxRelay  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


class Order(BaseModel):
    _collection = "bench_orders"
    n: int


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _throughput(mongo: str, redis: str, events: int) -> dict[str, Any]:
    queue = f"bench:{uuid.uuid4().hex[:8]}"
    database = f"bench_{uuid.uuid4().hex[:8]}"
    await earnorm.init(mongo_uri=mongo, database=database, redis_uri=redis,
                       event_config={"queue_name": queue, "outbox_relay": False})
    try:
        for start in range(0, events, 100):
            async with earnorm.transaction():
                await earnorm.event_bus.publish_batch(
                    [Event(name="bench.x", data={"i": i}) for i in range(start, start + 100)])
        relay = OutboxRelay(earnorm.event_bus, earnorm.env.database)
        started = time.perf_counter()
        while await relay.relay_once():
            pass
        seconds = time.perf_counter() - started
        assert relay.relayed == events, relay.relayed
        return {"case": "relay throughput", "events": events, "seconds": round(seconds, 3),
                "rate": round(events / seconds)}
    finally:
        await earnorm.close()


async def _latency(mongo: str, redis: str, events: int, rate: float, outbox: bool
                   ) -> dict[str, Any]:
    queue = f"bench:{uuid.uuid4().hex[:8]}"
    database = f"bench_{uuid.uuid4().hex[:8]}"
    await earnorm.init(mongo_uri=mongo, database=database, redis_uri=redis,
                       event_config={"queue_name": queue})
    committed: dict[str, float] = {}
    started: dict[str, float] = {}
    all_started = asyncio.Event()
    registry = HandlerRegistry()

    async def handle(event: Event) -> None:
        started[event.data["key"]] = time.perf_counter()
        if len(started) == events:
            all_started.set()
    registry.register("order.created", handle)
    try:
        async with Consumer(bus=earnorm.event_bus, registry=registry):
            interval = 1 / rate
            next_at = time.perf_counter()
            for n in range(events):
                key = f"k{n}"
                order = Order(n=n)
                if outbox:
                    async with earnorm.transaction():
                        await order.create()
                        await dispatch_model_event(earnorm.event_bus, Order, "created",
                                                   order.id, {"key": key})
                else:
                    await order.create()
                    await dispatch_model_event(earnorm.event_bus, Order, "created", order.id,
                                               {"key": key})
                committed[key] = time.perf_counter()
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await asyncio.wait_for(all_started.wait(), 60)
    finally:
        await earnorm.close()
    ms = [(started[key] - committed[key]) * 1000 for key in started]
    return {"case": "commit to handler (outbox)" if outbox else "publish to handler (direct)",
            "events": len(ms), "rate_per_s": rate, "p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(_percentile(ms, 0.99), 2), "max_ms": round(max(ms), 2)}


async def _main(quick: bool) -> list[dict[str, Any]]:
    from tests.orm import jongodb

    server = start_local_redis()
    mongo_server = None if os.environ.get("MONGODB_URI") else jongodb.start()
    mongo = os.environ.get("MONGODB_URI") or (mongo_server.uri if mongo_server else "")
    rows = []
    try:
        rows.append(await _throughput(mongo, server.url, 500 if quick else 2_000))
        print(json.dumps(rows[-1]), flush=True)
        for outbox in (False, True):
            rows.append(await _latency(mongo, server.url, 200 if quick else 1_000, 100.0,
                                       outbox))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
        if mongo_server is not None:
            mongo_server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = asyncio.run(_main(args.quick))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = ["| case | events | result |", "| --- | ---: | --- |"]
    for row in rows:
        result = (f"{row['rate']:,} events/s" if "rate" in row else
                  f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, max {row['max_ms']} ms "
                  f"at {row['rate_per_s']:g}/s")
        lines.append(f"| {row['case']} | {row['events']:,} | {result} |")
    table = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "outbox.json").write_text(json.dumps({"machine": machine, "rows": rows},
                                                    indent=2) + "\n")
    (RESULTS / "outbox.md").write_text(f"# Transactional outbox ({machine}, jongodb)\n\n"
                                       f"{table}\n")
    print(table)


if __name__ == "__main__":
    main()
