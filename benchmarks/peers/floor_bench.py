"""The floor: bare redis-py (asyncio, hiredis) doing only the Redis commands a queue needs.

- publish: LPUSH one message per awaited call, and pipelined by 100;
- consume: per event, move it from the ready list to an in-flight list (LMOVE, atomic) and ack
  it (LREM from the in-flight list, scanning from the oldest end): two round trips per event;
  the same commands pipelined by 100 (two round trips per 100 events); and bulk commands:
  RPOP 100, one HSET of the 100 into an in-flight hash, one HDEL of their fields (three
  commands per 100 events, not atomic: the cheapest any consumer with an in-flight record
  could be).

Messages are a Celery protocol v2 envelope of realistic size. Same CLI as the peer scripts:
``python floor_bench.py --workload floor_publish|floor_consume --redis-url URL --params JSON``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
import traceback
import uuid
from typing import Any

import redis.asyncio as aioredis
from benchlib import emit

QUEUE = "bench"
INFLIGHT = "bench:inflight:floor"
INFLIGHT_HASH = "bench:inflight:floor:hash"
BATCH = 100


def celery_message(i: int) -> bytes:
    """A Celery protocol v2 message like the ones EarnORM and Celery put on the list."""
    task_id = str(uuid.uuid4())
    body = base64.b64encode(json.dumps([[{"i": i}], {}, {}]).encode()).decode()
    envelope = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": "bench.noop", "id": task_id, "root_id": task_id,
            "parent_id": None, "group": None, "retries": 0, "eta": None, "expires": None,
            "argsrepr": "", "kwargsrepr": "{}", "origin": "bench@localhost",
        },
        "properties": {
            "correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": QUEUE}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    }  # fmt: skip
    return json.dumps(envelope).encode()


async def floor_publish(client: aioredis.Redis, n: int) -> dict[str, float]:
    messages = [celery_message(i) for i in range(n)]
    start = time.perf_counter()
    for message in messages:
        await client.lpush(QUEUE, message)
    sequential = n / (time.perf_counter() - start)
    await client.delete(QUEUE)
    start = time.perf_counter()
    for offset in range(0, n, BATCH):
        pipe = client.pipeline(transaction=False)
        for message in messages[offset : offset + BATCH]:
            pipe.lpush(QUEUE, message)
        await pipe.execute()
    pipelined = n / (time.perf_counter() - start)
    return {"lpush_seq_per_s": sequential, "lpush_pipe100_per_s": pipelined}


async def _fill(client: aioredis.Redis, n: int) -> None:
    await client.delete(QUEUE, INFLIGHT)
    for offset in range(0, n, 1000):
        await client.lpush(
            QUEUE, *[celery_message(i) for i in range(offset, min(n, offset + 1000))]
        )


async def floor_consume(client: aioredis.Redis, n: int) -> dict[str, float]:
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


WORKLOADS = {"floor_publish": floor_publish, "floor_consume": floor_consume}


async def _run(workload: str, redis_url: str, params: dict[str, Any]) -> dict[str, float]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await WORKLOADS[workload](client, int(params["n"]))
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
