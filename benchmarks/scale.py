"""Scaling out: drain, CPU-bound and I/O-bound throughput for 1, 2 and 4 consumer processes
(``--processes N``) on one queue, and for a Redis Cluster of 1 vs 3 shards.

    .venv/bin/python -m benchmarks.scale            # ~3 min on 2 cores
    .venv/bin/python -m benchmarks.scale --quick    # small counts

Every case: a backlog is published first, then the consumer starts; the rate is events over the
time from the first handler start to the last handler end across all processes (start-up is
reported apart, as the time from launch to the first handler). Handlers tally in memory and
write their tally to Redis every 0.2 s (``benchmarks/peers/scale_app.py``). Servers are private,
on loopback: one ``redis-server`` for the process cases, and real clusters (``tests.topology``,
masters only) for the shard cases. Results: ``benchmarks/results/scale.md`` and ``scale.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from earnorm import Event, EventBus, start_local_redis  # noqa: E402
from earnorm.events._broker.connect import open_redis  # noqa: E402
from tests.topology import SERVER, redis_cluster  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _consumer(url: str, queues: list[str], processes: int, concurrency: int
              ) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EARNORM_REDIS_URI": url, "EARNORM_QUEUE": ",".join(queues),
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "earnorm.events.consumer", "--app", "benchmarks.peers.scale_app",
         "--processes", str(processes), "--concurrency", str(concurrency),
         "--log-level", "WARNING"], cwd=ROOT, env=env, start_new_session=True)


async def _tallies(url: str, queues: list[str]) -> list[tuple[float, float, int]]:
    redis = open_redis(url)
    try:
        out = []
        for queue in queues:
            for value in (await redis.hgetall(f"{queue}:bench")).values():
                first, last, count = value.decode().split()
                out.append((float(first), float(last), int(count)))
        return out
    finally:
        await redis.aclose()


async def _case(url: str, queues: list[str], name: str, events: int, processes: int,
                concurrency: int) -> dict[str, Any]:
    per_queue = events // len(queues)
    for queue in queues:
        bus = await EventBus.connect(url, queue_name=queue)
        for start in range(0, per_queue, 1000):
            await bus.publish_batch([Event(name=name, data={})
                                     for _ in range(min(1000, per_queue - start))])
        await bus.close()
    launched = time.time()
    process = _consumer(url, [q.split("=")[0] for q in queues], processes, concurrency)
    try:
        deadline = time.monotonic() + 600
        while True:
            tallies = await _tallies(url, queues)
            if sum(t[2] for t in tallies) >= per_queue * len(queues):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"case {name} x{processes} did not finish")
            await asyncio.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=60)
    first = min(t[0] for t in tallies)
    last = max(t[1] for t in tallies)
    done = sum(t[2] for t in tallies)
    return {"events": done, "seconds": round(last - first, 3),
            "rate": round(done / (last - first)), "startup_s": round(first - launched, 2),
            "processes": processes, "busy_processes": len(tallies)}


async def _processes(events: dict[str, int], counts: list[int]) -> list[dict[str, Any]]:
    server = start_local_redis(binary=SERVER)
    rows = []
    try:
        for workload, concurrency in (("noop", 256), ("cpu", 64), ("io", 500)):
            for n in counts:
                queue = f"bench:{uuid.uuid4().hex[:8]}"
                row = await _case(server.url, [queue], f"scale.{workload}", events[workload], n,
                                  concurrency)
                rows.append({"case": f"{workload}, {n} process(es)", "workload": workload,
                             **row})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    return rows


async def _shards(events: int) -> list[dict[str, Any]]:
    from redis.crc import key_slot

    rows = []
    for masters in (1, 3):
        with ExitStack() as stack:
            cluster = stack.enter_context(redis_cluster(masters=masters, replicas=0))
            owner = {}
            from redis import Redis
            with Redis(port=cluster.nodes[0].port) as client:
                for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                    for slot in range(start, end + 1):
                        owner[slot] = int(master[1])
            chosen: dict[int, str] = {}
            tag = uuid.uuid4().hex[:6]
            i = 0
            while len(chosen) < 3:  # three queues: on three shards, or all on the one
                name = f"q{tag}{i}"
                i += 1
                master = owner[key_slot(("{" + name + "}").encode())]
                if masters == 1 or master not in chosen:
                    chosen[master if masters == 3 else i] = name
            queues = list(chosen.values())
            row = await _case(cluster.url, queues, "scale.noop", events, 2, 300)
            rows.append({"case": f"cluster, {masters} shard(s), 3 queues, 2 processes",
                         "workload": "noop", **row})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | events | first-to-last s | events/s | start-up s | processes that ran "
             "handlers |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['case']} | {row['events']:,} | {row['seconds']} | "
                     f"{row['rate']:,} | {row['startup_s']} | {row['busy_processes']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    events = {"noop": int(40_000 * scale), "cpu": int(8_000 * scale), "io": int(20_000 * scale)}
    rows = asyncio.run(_processes(events, [1, 2, 4]))
    rows += asyncio.run(_shards(int(40_000 * scale)))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    table = _table(rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps({"machine": machine, "rows": rows},
                                                   indent=2) + "\n")
    (RESULTS / "scale.md").write_text(f"# Scaling out ({machine})\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
