"""Soak: push N events through one consumer process and watch its resident memory.

    python -m benchmarks.soak                      # 1,000,000 events on a private local server
    python -m benchmarks.soak --events 200000 --redis-uri redis://localhost:6379/15

A publisher here keeps a bounded backlog (so Redis holds at most ``--backlog`` events) while
one consumer subprocess (``--worker`` mode of this file: a ``Consumer`` with a no-op handler)
drains it. The consumer's RSS is sampled from ``/proc`` once a second; ``rss_start`` is taken
after ``--warmup`` events (100,000: caches, buffers and the allocator have settled), and
compared with ``rss_end`` after the last event and the highest sample between (issue 26: flat
within 2 MB from 100k to 1M). Prints one JSON object (and a summary line on stderr) and writes
``results/soak.json`` and ``soak.md`` (the per-second samples in the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from earnorm import (  # noqa: E402
    Consumer,
    Event,
    EventBus,
    HandlerRegistry,
    start_local_redis,
)

MIB = 1024 * 1024


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def _worker(redis_url: str, queue: str, concurrency: int) -> None:
    async def tick(event: Event) -> None:
        """No work: the soak measures the consumer, not a handler."""

    registry = HandlerRegistry()
    registry.register("soak.tick", tick)
    consumer = Consumer(redis_url, queue_name=queue, registry=registry, concurrency=concurrency)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, consumer.stop)
    await consumer.run()


def _spawn_worker(redis_url: str, queue: str, concurrency: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.soak", "--worker", "--redis-uri", redis_url,
         "--queue", queue, "--concurrency", str(concurrency)],
        cwd=ROOT, start_new_session=True,
    )


async def _left(bus: EventBus) -> int:
    """Events not yet handled: ready plus in flight."""
    counts = await bus.stats()
    return int(sum(counts["ready"].values())) + int(counts["inflight"])


async def run_soak(
    redis_url: str, events: int, *, warmup: int = 20_000, backlog: int = 20_000,
    batch: int = 1000, concurrency: int = 100, queue: str | None = None,
) -> dict[str, Any]:
    """Run the soak; returns the figures (RSS in bytes, rate in events/s)."""
    queue = queue or f"soak:{uuid.uuid4().hex[:8]}"
    bus = await EventBus.connect(redis_url, queue_name=queue)
    worker = _spawn_worker(redis_url, queue, concurrency)
    samples: list[tuple[float, int, int]] = []  # (seconds, events handled, rss)
    published = 0
    rss_start = rss_idle = 0
    started = time.monotonic()
    try:
        for _ in range(600):  # the consumer's start-up: 30 s at most
            if (await bus.stats())["consumers"]:
                break
            await asyncio.sleep(0.05)
        rss_idle = _rss(worker.pid)
        next_sample = time.monotonic()
        warm_at: float | None = None
        while True:
            left = await _left(bus)
            handled = published - left
            now = time.monotonic()
            if now >= next_sample:
                samples.append((round(now - started, 2), handled, _rss(worker.pid)))
                next_sample = now + 1.0
            if warm_at is None and handled >= min(warmup, events):
                warm_at, rss_start, warm_handled = now, _rss(worker.pid), handled
            if published < events and left < backlog:
                n = min(batch, events - published)
                await bus.publish_batch([Event(name="soak.tick", data={"n": published + i})
                                         for i in range(n)])
                published += n
            elif published >= events and left == 0:
                break
            else:
                await asyncio.sleep(0.01)
            if worker.poll() is not None:
                raise RuntimeError(f"the consumer exited with code {worker.returncode}")
        finished = time.monotonic()
        rss_end = _rss(worker.pid)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        keys = [k async for k in bus.redis.scan_iter(match=f"{queue}*")]
        if keys:
            await bus.redis.delete(*keys)
        await bus.close()
    assert warm_at is not None
    after_warmup = [rss for at, _, rss in samples if at >= warm_at - started]
    rss_max = max([*after_warmup, rss_end])
    return {
        "events": events,
        "concurrency": concurrency,
        "warmup": warmup,
        "seconds": round(finished - started, 2),
        "rate_per_s": round(events / (finished - started)),
        "rate_after_warmup_per_s": round((events - warm_handled) / max(finished - warm_at, 1e-9)),
        "rss_idle_mib": round(rss_idle / MIB, 2),
        "rss_start_mib": round(rss_start / MIB, 2),
        "rss_end_mib": round(rss_end / MIB, 2),
        "rss_max_mib": round(rss_max / MIB, 2),
        "rss_growth_mib": round((rss_end - rss_start) / MIB, 2),
        "samples": samples,
    }


def _write_results(result: dict[str, Any]) -> None:
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, {platform.platform()}")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "soak.json").write_text(json.dumps({"machine": machine, **result}) + "\n")
    over = result["rss_max_mib"] - result["rss_start_mib"]
    (results / "soak.md").write_text("\n".join([
        f"# Soak: {result['events']:,} events through one consumer ({machine})", "",
        "| figure | value |", "| --- | ---: |",
        f"| events/s (whole run, publisher in the same machine) | {result['rate_per_s']:,} |",
        f"| RSS idle (started, nothing handled), MiB | {result['rss_idle_mib']} |",
        f"| RSS after {result['warmup']:,} events, MiB | {result['rss_start_mib']} |",
        f"| RSS at the end, MiB | {result['rss_end_mib']} |",
        f"| highest RSS after {result['warmup']:,} events, MiB | {result['rss_max_mib']} |",
        f"| growth, end - after warm-up (MiB) | {result['rss_growth_mib']} |",
        f"| highest - after warm-up (MiB; goal <= 2) | {over:.2f} |", ""]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=100_000)
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--redis-uri", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--queue", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(_worker(args.redis_uri, args.queue, args.concurrency))
        return 0
    local = None if args.redis_uri else start_local_redis()
    url = args.redis_uri or (local.url if local else "")
    try:
        result = asyncio.run(run_soak(
            url, args.events, warmup=args.warmup, backlog=args.backlog,
            concurrency=args.concurrency, queue=args.queue,
        ))
    finally:
        if local is not None:
            local.stop()
    print(json.dumps(result))
    _write_results(result)
    print(
        f"soak: {result['events']:,} events in {result['seconds']}s "
        f"({result['rate_per_s']:,}/s); consumer RSS {result['rss_start_mib']} MiB after "
        f"warm-up -> {result['rss_end_mib']} MiB at the end (max {result['rss_max_mib']}, "
        f"growth {result['rss_growth_mib']} MiB)", file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
