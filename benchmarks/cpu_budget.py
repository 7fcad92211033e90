"""Where a consumer's CPU goes per message: fetch, decode, dispatch, ack, and the rest, in
microseconds, beside the redis-py floor doing the least a safe consumer must (move a batch into
an in-flight hash, delete it after).

    .venv/bin/python -m benchmarks.cpu_budget              # 20,000 no-op events
    .venv/bin/python -m benchmarks.cpu_budget --events 50000
    .venv/bin/python -m benchmarks.cpu_budget --baseline REV   # also REV's drain, interleaved

Two passes over the same backlog on a private Redis, the consumer in this process:

1. unprofiled: CPU seconds (``time.process_time``) and wall time from the first handler to the
   last, over ``--events``: the total budget per message;
2. under cProfile: how that total splits by phase (each phase's cumulative time over the
   profile's total, applied to pass 1's figure, so the profiler's own overhead cancels out).

Phases: ``fetch`` (the fetch script and the blocking wait), ``decode`` (``protocol.decode``),
``dispatch`` (``Pipeline.process`` without decode: the plan, Event objects, the handler call,
the outcome), ``ack`` (the batched ack script), ``event loop + other`` (asyncio, redis-py
connection plumbing not inside a phase, heartbeats). Results: ``results/cpu_budget.md``/``.json``.

``--baseline REV``: the unprofiled drain of this tree and of git revision REV (its ``earnorm/``
exported under ``benchmarks/.envs/trees/``), each in a fresh process, alternating for
``--reps`` repetitions on the same server: the CPU per event of both, and the ratio per pair.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
# EARNORM_TREE: another tree's earnorm/ (a --baseline's drain runs in a process of its own)
sys.path.insert(0, os.environ.get("EARNORM_TREE") or str(ROOT))

from benchmarks.harness.trees import export_tree  # noqa: E402
from earnorm import Consumer, Event, EventBus, HandlerRegistry, start_local_redis  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PHASES = {
    "fetch": [("_broker/broker.py", "fetch"), ("_broker/broker.py", "wait_and_fetch")],
    "decode": [("_wire/decode.py", "decode")],
    "dispatch": [("consumer/_pipeline.py", "process")],
    "ack": [("_broker/broker.py", "ack")],
}


def counting_noop(events: int) -> tuple[Any, asyncio.Event, dict[str, float]]:
    """A no-op handler that notes its first and last call and sets the event at the last."""
    done = asyncio.Event()
    seen = {"n": 0.0, "first": 0.0, "last": 0.0}

    async def noop(event: Event) -> None:
        now = time.perf_counter()
        if not seen["n"]:
            seen["first"] = now
        seen["n"] += 1
        seen["last"] = now
        if seen["n"] == events:
            done.set()
    return noop, done, seen


async def _drain(url: str, events: int, profile: cProfile.Profile | None) -> dict[str, float]:
    queue = f"budget:{uuid.uuid4().hex[:8]}"
    bus = await EventBus.connect(url, queue_name=queue)
    for start in range(0, events, 1000):
        await bus.publish_batch([Event(name="budget.noop", data={"i": i})
                                 for i in range(start, min(start + 1000, events))])
    noop, done, seen = counting_noop(events)
    registry = HandlerRegistry()
    registry.register("budget.noop", noop)
    async with Consumer(bus=bus, registry=registry, concurrency=256):
        cpu0 = time.process_time()
        if profile is not None:
            profile.enable()
        await asyncio.wait_for(done.wait(), 300)
        if profile is not None:
            profile.disable()
        cpu = time.process_time() - cpu0
    await bus.close()
    wall = seen["last"] - seen["first"]
    return {"events": events, "wall_s": wall, "rate": events / wall, "cpu_s": cpu,
            "cpu_us_per_event": cpu / events * 1e6}


async def _floor(url: str, events: int) -> dict[str, float]:
    """RPOP 100 + HSET in-flight + HDEL ack per batch, pipelined: no decode, no handler."""
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    key, inflight = f"floor:{uuid.uuid4().hex[:8]}", f"floor-inflight:{uuid.uuid4().hex[:8]}"
    raw = (await _one_envelope(url))
    for start in range(0, events, 1000):
        await redis.lpush(key, *[raw] * min(1000, events - start))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    left = events
    while left:
        batch = await redis.rpop(key, 100)
        mapping = {str(i): v for i, v in enumerate(batch)}
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hset(inflight, mapping=mapping)
            pipe.hdel(inflight, *mapping)
            await pipe.execute()
        left -= len(batch)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await redis.aclose()
    return {"events": events, "wall_s": wall, "rate": events / wall, "cpu_s": cpu,
            "cpu_us_per_event": cpu / events * 1e6}


async def _one_envelope(url: str) -> bytes:
    from earnorm.events._wire.encode import encode_event

    return encode_event(Event(name="budget.noop", data={"i": 0}), "floor")


def _split(profile: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(profile)
    total = sum(t for (_, _, tt, _, _) in stats.stats.values() for t in [tt])  # type: ignore[attr-defined]
    cumulative: dict[str, float] = {}
    for phase, functions in PHASES.items():
        cumulative[phase] = sum(
            ct for (file, _, name), (_, _, _, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
            if any(file.endswith(f) and name == n for f, n in functions))
    cumulative["dispatch"] -= cumulative["decode"]  # decode runs inside process
    cumulative["event loop + other"] = total - sum(cumulative.values())
    return {phase: value / total for phase, value in cumulative.items()}


async def _main(events: int) -> dict[str, Any]:
    server = start_local_redis()
    try:
        plain = await _drain(server.url, events, None)
        profile = cProfile.Profile()
        await _drain(server.url, events, profile)
        floor = await _floor(server.url, events)
    finally:
        server.stop()
    shares = _split(profile)
    return {"consumer": plain, "floor": floor, "shares": shares,
            "us": {phase: round(share * plain["cpu_us_per_event"], 2)
                   for phase, share in shares.items()}}


def _export(revision: str) -> Path:
    """``earnorm/`` as of ``revision``, byte-compiled (as an installed package is)."""
    _, tree = export_tree(revision)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "earnorm")],
                   check=True)
    return tree


def _drain_in(tree: Path | None, url: str, events: int) -> dict[str, float]:
    env = {**os.environ, "EARNORM_TREE": str(tree or ROOT)}
    out = subprocess.run([sys.executable, "-m", "benchmarks.cpu_budget", "--drain-only", url,
                          "--events", str(events)], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=600).stdout
    return cast(dict[str, float], json.loads(out.strip().splitlines()[-1]))


def against_baseline(revision: str, events: int, reps: int) -> str:
    """This tree's drain and ``revision``'s, alternating, each in a fresh process."""
    tree = _export(revision)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "earnorm")],
                   check=True)
    server = start_local_redis()
    pairs: list[tuple[dict[str, float], dict[str, float]]] = []
    try:
        for rep in range(reps):
            sides = [("this", None), ("baseline", tree)]
            got = {name: _drain_in(side, server.url, events)
                   for name, side in (sides if rep % 2 == 0 else sides[::-1])}
            pairs.append((got["this"], got["baseline"]))
    finally:
        server.stop()
    lines = [f"## This tree against {revision} ({events:,} no-op events, concurrency 256, "
             "each drain in a fresh process, alternating)", "",
             "| repetition | this tree: us/event | events/s | baseline: us/event | events/s "
             "| drain ratio |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for i, (now, then) in enumerate(pairs, 1):
        lines.append(f"| {i} | {now['cpu_us_per_event']:.1f} | {now['rate']:,.0f} | "
                     f"{then['cpu_us_per_event']:.1f} | {then['rate']:,.0f} | "
                     f"{now['rate'] / then['rate']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--baseline", default="", help="git revision to compare with")
    parser.add_argument("--reps", type=int, default=4, help="pairs with --baseline")
    parser.add_argument("--drain-only", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain_only:
        print(json.dumps(asyncio.run(_drain(args.drain_only, args.events, None))))
        return
    result = asyncio.run(_main(args.events))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    consumer, floor = result["consumer"], result["floor"]
    lines = [f"# CPU per message ({machine}, {args.events:,} no-op events, concurrency 256)", "",
             "| | CPU us per event | events/s (first to last) |", "| --- | ---: | ---: |",
             f"| EarnORM consumer | {consumer['cpu_us_per_event']:.1f} | {consumer['rate']:,.0f} |",
             f"| redis-py floor (RPOP 100 + HSET + HDEL, pipelined) | "
             f"{floor['cpu_us_per_event']:.1f} | {floor['rate']:,.0f} |", "",
             "| phase | us per event | share |", "| --- | ---: | ---: |"]
    for phase, us in result["us"].items():
        lines.append(f"| {phase} | {us:.1f} | {result['shares'][phase]:.0%} |")
    table = "\n".join(lines)
    if args.baseline:
        table += "\n\n" + against_baseline(args.baseline, args.events, args.reps)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu_budget.json").write_text(json.dumps({"machine": machine, **result},
                                                        indent=2) + "\n")
    (RESULTS / "cpu_budget.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
