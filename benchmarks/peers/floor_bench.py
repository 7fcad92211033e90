"""The floor: bare redis-py (asyncio, hiredis) doing only the Redis commands a queue needs.

- publish: LPUSH one message per awaited call, and pipelined by 100;
- consume: per event, move it from the ready list to an in-flight list (LMOVE, atomic) and ack
  it (LREM from the in-flight list, scanning from the oldest end): two round trips per event;
  the same commands pipelined by 100 (two round trips per 100 events); and bulk commands:
  RPOP 100, one HSET of the 100 into an in-flight hash, one HDEL of their fields (three
  commands per 100 events, not atomic: the cheapest any consumer with an in-flight record
  could be).

- drain: the same bulk commands in a worker process of their own (``floor_worker.py``), for
  its peak RSS: what a bare asyncio + redis-py process takes, beside EarnORM's worker;
- imports: in a fresh interpreter, the time and resident memory ``import asyncio,
  redis.asyncio`` takes, then what ``from earnorm import Consumer, ...`` adds to it.

Messages are a Celery protocol v2 envelope of realistic size. Same CLI as the peer scripts:
``python floor_bench.py --workload floor_publish|floor_consume|floor_drain|floor_imports
--redis-url URL --params JSON``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any

import redis.asyncio as aioredis
from benchlib import EARNORM_TREE, QUEUE, celery_message, emit, floor_push
from procs import Worker, WorkerSpec
from tracker import RESULT_KEY

INFLIGHT = "bench:inflight:floor"
INFLIGHT_HASH = "bench:inflight:floor:hash"
BATCH = 100


async def floor_publish(client: aioredis.Redis, url: str, n: int) -> dict[str, float]:
    messages = [celery_message(i) for i in range(n)]
    sequential = n / await floor_push(client, messages, batch=False, key=QUEUE)
    await client.delete(QUEUE)
    pipelined = n / await floor_push(client, messages, batch=True, key=QUEUE)
    return {"lpush_seq_per_s": sequential, "lpush_pipe100_per_s": pipelined}


async def _fill(client: aioredis.Redis, n: int) -> None:
    await client.delete(QUEUE, INFLIGHT)
    for offset in range(0, n, 1000):
        await client.lpush(
            QUEUE, *[celery_message(i) for i in range(offset, min(n, offset + 1000))]
        )


async def floor_consume(client: aioredis.Redis, url: str, n: int) -> dict[str, float]:
    await _fill(client, n)
    start = time.perf_counter()
    while True:
        message = await client.lmove(QUEUE, INFLIGHT, "RIGHT", "LEFT")
        if message is None:
            break
        await client.lrem(INFLIGHT, -1, message)
    single = n / (time.perf_counter() - start)
    await _fill(client, n)
    start = time.perf_counter()
    remaining = n
    while remaining > 0:
        take = min(BATCH, remaining)
        pipe = client.pipeline(transaction=False)
        for _ in range(take):
            pipe.lmove(QUEUE, INFLIGHT, "RIGHT", "LEFT")
        moved = [m for m in await pipe.execute() if m is not None]
        pipe = client.pipeline(transaction=False)
        for message in moved:
            pipe.lrem(INFLIGHT, -1, message)
        await pipe.execute()
        remaining -= take
    batched = n / (time.perf_counter() - start)
    await _fill(client, n)
    start = time.perf_counter()
    while popped := await client.rpop(QUEUE, BATCH):
        fields = {str(k): message for k, message in enumerate(popped)}
        await client.hset(INFLIGHT_HASH, mapping=fields)
        await client.hdel(INFLIGHT_HASH, *fields)
    bulk = n / (time.perf_counter() - start)
    return {
        "move_ack_seq_per_s": single,
        "move_ack_pipe100_per_s": batched,
        "pop_hash_bulk100_per_s": bulk,
    }


async def floor_drain(client: aioredis.Redis, url: str, n: int) -> dict[str, float]:
    """``floor_worker.py`` drains ``n`` messages: its rate and peak RSS."""
    await _fill(client, n)
    await client.delete(RESULT_KEY)
    env = {"BENCH_REDIS_URL": url, "BENCH_TARGET": str(n)}
    with Worker(WorkerSpec(argv=[sys.executable, "floor_worker.py"]), env) as worker:
        deadline = time.monotonic() + 60 + n / 1000
        while (raw := await client.get(RESULT_KEY)) is None:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"floor worker not done: {worker.log_tail(600)}")
            await asyncio.sleep(0.01)
        metrics = worker.peak_rss()
    result = json.loads(raw)
    return {**metrics, "drain_per_s": n / (result["last"] - result["first"])}


# Run in a fresh interpreter: the figures of the floor's imports, then what EarnORM's add.
_IMPORTS = """
import json, sys, time
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
t0 = time.perf_counter()
import asyncio, redis.asyncio
t1, r1 = time.perf_counter(), rss()
sys.path.insert(0, sys.argv[1])
from earnorm import Consumer, Event, HandlerRegistry
t2, r2 = time.perf_counter(), rss()
print(json.dumps([t1 - t0, t2 - t1, r1, r2]))
"""


def _import_figures(n: int) -> dict[str, float]:
    runs = [json.loads(subprocess.run([sys.executable, "-c", _IMPORTS, EARNORM_TREE], check=True,
                                      capture_output=True, text=True, timeout=60).stdout)
            for _ in range(max(n, 1))]
    floor_s, earnorm_s, floor_mb, earnorm_mb = (statistics.median(r[i] for r in runs)
                                                for i in range(4))
    return {"import_floor_ms": floor_s * 1000, "import_earnorm_ms": earnorm_s * 1000,
            "import_rss_floor_mb": floor_mb, "import_rss_earnorm_mb": earnorm_mb - floor_mb}


async def floor_imports(client: aioredis.Redis, url: str, n: int) -> dict[str, float]:
    """Import time and memory of asyncio + redis-py, and EarnORM's on top: medians of
    ``n`` fresh interpreters (byte-compiled trees, as installed packages are)."""
    return await asyncio.to_thread(_import_figures, n)


WORKLOADS = {"floor_publish": floor_publish, "floor_consume": floor_consume,
             "floor_drain": floor_drain, "floor_imports": floor_imports}


async def _run(workload: str, redis_url: str, params: dict[str, Any]) -> dict[str, float]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await WORKLOADS[workload](client, redis_url, int(params["n"]))
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--describe", action="store_true")
    parser.add_argument("--workload", choices=sorted(WORKLOADS))
    parser.add_argument("--redis-url")
    parser.add_argument("--params", default="{}")
    args = parser.parse_args()
    if args.describe:
        emit({"ok": True, "variants": {}, "skips": {}, "batch_api": "pipeline(100)"})
        return
    try:
        metrics = asyncio.run(_run(args.workload, args.redis_url, json.loads(args.params)))
    except Exception as exc:
        traceback.print_exc()
        emit({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})
    else:
        emit({"ok": True, "metrics": metrics})


if __name__ == "__main__":
    main()
