"""What flow control costs per event: a consumer draining no-op events plainly, with a rate
limit that never makes one wait, and with a per-key concurrency limit that never makes one
wait, so the difference is the price of the check itself (one script per event for the rate,
two for the key: take the slot, give it back). Interleaved repetitions in one process, on one
private Redis, the consumer in this process:

    .venv/bin/python -m benchmarks.flow_cost                 # 20,000 events, 3 repetitions
    .venv/bin/python -m benchmarks.flow_cost --events 5000 --repeat 1

Reports CPU microseconds per event (``time.process_time``, this process: the consumer's side),
events/s from the first handler call to the last, and each limited drain's extra CPU and time
per event over the plain drain of the same repetition. Results: ``results/flow_cost.md``/``.json``.
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

from benchmarks.cpu_budget import counting_noop  # noqa: E402
from earnorm import Consumer, Event, EventBus, HandlerRegistry, start_local_redis  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
KEYS = 100  # distinct concurrency keys, each allowed more at once than ever run
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "rate limit (never waits)": {"rate_limit": "1000000/s"},
    "key limit (never waits)": {"concurrency_key": "key", "max_concurrent": 10_000},
}


async def drain(url: str, events: int, options: dict[str, Any]) -> dict[str, float]:
    queue = f"flow:{uuid.uuid4().hex[:8]}"
    bus = await EventBus.connect(url, queue_name=queue)
    for start in range(0, events, 1000):
        await bus.publish_batch([Event(name="flow.noop", data={"key": i % KEYS})
                                 for i in range(start, min(start + 1000, events))])
    noop, done, seen = counting_noop(events)
    registry = HandlerRegistry()
    registry.register("flow.noop", noop, **options)
    async with Consumer(bus=bus, registry=registry, concurrency=256):
        cpu0 = time.process_time()
        await asyncio.wait_for(done.wait(), 600)
        cpu = time.process_time() - cpu0
    await bus.redis.flushdb()
    await bus.close()
    wall = seen["last"] - seen["first"]
    return {"rate": events / wall, "cpu_us": cpu / events * 1e6, "wall_us": wall / events * 1e6}


async def run(events: int, repeat: int) -> dict[str, list[dict[str, float]]]:
    server = start_local_redis()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    try:
        for _ in range(repeat):  # interleaved: a noisy minute hits every variant alike
            for name, options in VARIANTS.items():
                runs[name].append(await drain(server.url, events, options))
    finally:
        server.stop()
    return runs


def table(runs: dict[str, list[dict[str, float]]], events: int, machine: str) -> str:
    def median(name: str, metric: str) -> float:
        return statistics.median(r[metric] for r in runs[name])

    lines = [f"# Flow control's cost per event ({machine}; {events:,} no-op events, "
             f"concurrency 256, median of {len(runs['plain'])} interleaved repetitions)", "",
             "| drain | events/s | CPU us per event | extra CPU us per event | extra time us "
             "per event |", "| --- | ---: | ---: | ---: | ---: |"]
    for name in runs:
        extra_cpu = median(name, "cpu_us") - median("plain", "cpu_us")
        extra_wall = median(name, "wall_us") - median("plain", "wall_us")
        lines.append(f"| {name} | {median(name, 'rate'):,.0f} | {median(name, 'cpu_us'):.1f} | "
                     + ("" if name == "plain" else f"{extra_cpu:+.1f}") + " | "
                     + ("" if name == "plain" else f"{extra_wall:+.1f}") + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = asyncio.run(run(args.events, args.repeat))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    text = table(runs, args.events, machine)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flow_cost.json").write_text(json.dumps(
        {"machine": machine, "events": args.events, "runs": runs}, indent=2) + "\n")
    (RESULTS / "flow_cost.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
