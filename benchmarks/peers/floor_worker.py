"""The floor's worker process: bare asyncio + redis-py (hiredis), the least a consumer with an
in-flight record can do (RPOP 100, HSET them into an in-flight hash, HDEL them), no decoding,
no handler. Its peak RSS is what asyncio and redis-py cost before any queue library: the floor
EarnORM's worker is compared with. Stops after ``BENCH_TARGET`` messages and writes the
tracker's result (first and last message time), like every peer's worker.

Usage: ``python floor_worker.py`` with ``BENCH_REDIS_URL`` and ``BENCH_TARGET`` set.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import redis.asyncio as aioredis
from tracker import RESULT_KEY

QUEUE = "bench"
INFLIGHT = "bench:inflight:floor:hash"


async def drain(url: str, target: int) -> None:
    client = aioredis.Redis.from_url(url)
    done, first = 0, 0.0
    while done < target:
        popped = await client.rpop(QUEUE, 100)
        if not popped:
            await asyncio.sleep(0.001)
            continue
        first = first or time.time()
        fields = {str(done + i): message for i, message in enumerate(popped)}
        await client.hset(INFLIGHT, mapping=fields)
        await client.hdel(INFLIGHT, *fields)
        done += len(popped)
    await client.set(RESULT_KEY, json.dumps({"first": first, "last": time.time(),
                                             "samples": []}))
    await client.aclose()
    await asyncio.Event().wait()  # like a worker: stays up until stopped


if __name__ == "__main__":
    asyncio.run(drain(os.environ["BENCH_REDIS_URL"], int(os.environ["BENCH_TARGET"])))
