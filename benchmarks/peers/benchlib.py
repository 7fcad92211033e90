"""Driver side shared by every peer script: the workloads, written once against ``Adapter``.

A peer script (``celery_bench.py`` ...) defines an adapter (how to publish with that system
and how to start its worker) and calls ``main(adapter)``. The orchestrator runs the script in
the peer's own virtual environment:

    python celery_bench.py --describe
    python celery_bench.py --workload pubdrain --redis-url URL --params '{"n": 2000, ...}'

and reads one JSON object from the last line of stdout: ``{"ok": true, "metrics": {...}}``,
``{"ok": false, "skipped": "why"}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import redis
import redis.asyncio
from procs import Worker, WorkerSpec
from tracker import COUNT_KEY, FIRST_KEY, LAST_KEY, RESULT_KEY, WARM_KEY

Params = dict[str, Any]
Metrics = dict[str, Any]
BATCH_SIZE = 100
QUEUE = "bench"
FLOOR_KEY = "bench:floor-publish"  # where the interleaved floor pushes (never drained)
FLOOR_ROUNDS = 10  # a publish run alternates with the floor this many times
# The earnorm/ the EarnORM side imports: the repo's, or a baseline's tree (run.py --baseline).
EARNORM_TREE = os.environ.get("EARNORM_TREE") or str(Path(__file__).resolve().parents[2])


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


class Skip(Exception):
    """This peer cannot run this workload; the message says why."""


class Adapter(Protocol):
    """What a peer script provides. Sync systems simply do blocking work inside the coroutines."""

    name: str
    # {"drain": {"default": "solo pool", ...}, "io": {...}}: variant key -> human label.
    variants: dict[str, dict[str, str]]
    # workload -> reason, for workloads the system cannot run.
    skips: dict[str, str]
    batch_api: str

    async def open(self, redis_url: str) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, task: str, data: dict[str, Any], due: float | None) -> None: ...
    async def publish_batch(self, task: str, items: list[dict[str, Any]]) -> None: ...
    def worker(self, workload: str, variant: str) -> WorkerSpec: ...
    async def delayed_pending(self) -> int | None: ...


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (0 < q <= 100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class Session:
    """One workload run: a Redis client for the bookkeeping keys and the adapter."""

    def __init__(self, adapter: Adapter, redis_url: str, params: Params) -> None:
        self.adapter = adapter
        self.redis_url = redis_url
        self.params = params
        self.redis = redis.Redis.from_url(redis_url)
        self.timeout = float(params.get("timeout", 120))

    def worker(self, workload: str, variant: str, target: int) -> Worker:
        spec = self.adapter.worker(workload, variant)
        env = {
            "BENCH_REDIS_URL": self.redis_url,
            "BENCH_TARGET": str(target),
            "BENCH_SHARED": "1" if spec.shared else "0",
        }
        return Worker(spec, env)

    async def publish_all(self, task: str, items: list[dict[str, Any]], batch: bool) -> float:
        """Publish ``items``; return the elapsed seconds."""
        start = time.perf_counter()
        if batch:
            for offset in range(0, len(items), BATCH_SIZE):
                await self.adapter.publish_batch(task, items[offset : offset + BATCH_SIZE])
        else:
            for data in items:
                await self.adapter.publish(task, data, None)
        return time.perf_counter() - start

    async def publish_beside_floor(self, task: str, items: list[dict[str, Any]],
                                   batch: bool) -> tuple[float, float]:
        """Publish ``items`` in ``FLOOR_ROUNDS`` slices, each next to the redis-py floor
        pushing as many ready-made messages of the same size (one awaited LPUSH each, or
        pipelines of 100), in this process, which goes first alternating: the ratio of the
        two then holds whatever the machine does meanwhile. Returns (system s, floor s)."""
        floor = redis.asyncio.Redis.from_url(self.redis_url)
        messages = [celery_message(i) for i in range(len(items))]
        size = -(-len(items) // FLOOR_ROUNDS)
        system_s = floor_s = 0.0
        try:
            for round_ in range(FLOOR_ROUNDS):
                part = slice(round_ * size, (round_ + 1) * size)
                for floor_turn in ((True, False) if round_ % 2 else (False, True)):
                    if floor_turn:
                        floor_s += await floor_push(floor, messages[part], batch)
                    else:
                        system_s += await self.publish_all(task, items[part], batch)
            await floor.delete(FLOOR_KEY)
        finally:
            await floor.aclose()
        return system_s, floor_s

    async def warm_up(self, worker: Worker) -> None:
        """Wait until the worker has handled one warm-up event, so it is fully started."""
        await self.adapter.publish("bench.noop", {"warm": 1}, None)
        await self._poll(worker, lambda: bool(self.redis.exists(WARM_KEY)), 60.0)

    async def wait_done(self, worker: Worker, shared: bool) -> dict[str, Any]:
        """Wait for the tracker's result: ``{"first", "last", "samples"}``."""
        if shared:
            await self._poll(worker, lambda: bool(self.redis.exists(LAST_KEY)), self.timeout)
            first, last = self.redis.mget(FIRST_KEY, LAST_KEY)
            return {"first": float(first), "last": float(last), "samples": []}  # type: ignore[arg-type]
        await self._poll(worker, lambda: bool(self.redis.exists(RESULT_KEY)), self.timeout)
        return json.loads(self.redis.get(RESULT_KEY))  # type: ignore[arg-type]

    async def _poll(self, worker: Worker, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            worker.check_alive()
            if time.monotonic() > deadline:
                progress = self.redis.get(COUNT_KEY)
                raise TimeoutError(
                    f"not done within {timeout:.0f}s (shared count {progress!r}); "
                    f"worker log: {worker.log_tail(600)}"
                )
            await asyncio.sleep(0.01)


async def floor_push(client: redis.asyncio.Redis, messages: list[bytes], batch: bool,
                     key: str = FLOOR_KEY) -> float:
    """The floor's publish: an awaited LPUSH per message, or pipelines of ``BATCH_SIZE``;
    returns the seconds it took."""
    start = time.perf_counter()
    if batch:
        for offset in range(0, len(messages), BATCH_SIZE):
            async with client.pipeline(transaction=False) as pipe:
                for message in messages[offset : offset + BATCH_SIZE]:
                    pipe.lpush(key, message)
                await pipe.execute()
    else:
        for message in messages:
            await client.lpush(key, message)
    return time.perf_counter() - start


async def pubdrain(s: Session) -> Metrics:
    """Publish n no-op events (sequentially or batched) beside the floor, then drain them
    with one worker."""
    n, variant, batch = int(s.params["n"]), s.params["variant"], s.params["publish"] == "batch"
    items = [{"i": i} for i in range(n)]
    elapsed, floor_s = await s.publish_beside_floor("bench.noop", items, batch)
    kind = "batch" if batch else "seq"
    metrics: Metrics = {f"publish_{kind}_per_s": n / elapsed,
                        f"floor_{kind}_per_s": n / floor_s,
                        f"publish_{kind}_ratio": floor_s / elapsed}
    launched = time.time()
    with s.worker("drain", variant, n) as worker:
        result = await s.wait_done(worker, worker.spec.shared)
        metrics.update(worker.peak_rss())
    # Steady state: first handler start to last handler end; start-up (launch to the first
    # handler: imports, connecting, the first fetch) apart.
    metrics["drain_per_s"] = n / (result["last"] - result["first"])
    metrics["startup_s"] = result["first"] - launched
    return metrics


async def io(s: Session) -> Metrics:
    """Drain n events whose handler waits 10 ms (sleep or await, per the pool)."""
    n, variant = int(s.params["n"]), s.params["variant"]
    await s.publish_all("bench.io", [{"i": i} for i in range(n)], batch=True)
    with s.worker("io", variant, n) as worker:
        result = await s.wait_done(worker, worker.spec.shared)
        metrics = worker.peak_rss()
    metrics["io_per_s"] = n / (result["last"] - result["first"])
    return metrics


async def _publish_delayed(s: Session, dues: list[float]) -> int:
    """Publish one delayed event per due time; return how many were published after due."""
    late = 0
    for i, due in enumerate(dues):
        await s.adapter.publish("bench.noop", {"i": i, "due": due}, due)
        late += time.time() > due
    return late


async def delay_spread(s: Session) -> Metrics:
    """n events due evenly over ``spread`` seconds: lateness = handler start - due time."""
    n, spread, lead = int(s.params["n"]), float(s.params["spread"]), float(s.params["lead"])
    with s.worker("delay", "default", n) as worker:
        await s.warm_up(worker)
        start = time.time() + lead
        published_late = await _publish_delayed(s, [start + spread * i / n for i in range(n)])
        result = await s.wait_done(worker, worker.spec.shared)
        metrics = worker.peak_rss()
    lateness = [x * 1000 for x in result["samples"]]
    metrics.update(
        lateness_p50_ms=percentile(lateness, 50),
        lateness_p99_ms=percentile(lateness, 99),
        lateness_max_ms=max(lateness),
        published_late=published_late,
    )
    return metrics


async def delay_instant(s: Session) -> Metrics:
    """n events due at one instant: time until all are ready (if observable) and all ran."""
    n, lead = int(s.params["n"]), float(s.params["lead"])
    with s.worker("delay", "default", n) as worker:
        await s.warm_up(worker)
        due = time.time() + lead
        published_late = await _publish_delayed(s, [due] * n)
        ready_s = None
        deadline = due + s.timeout
        # Some systems take minutes here; a bounded wait reports "not done within" instead.
        while not s.redis.exists(RESULT_KEY) and time.time() < deadline:
            worker.check_alive()
            if ready_s is None and time.time() >= due:
                pending = await s.adapter.delayed_pending()
                if pending == 0:
                    ready_s = time.time() - due
            await asyncio.sleep(0.005)
        raw = s.redis.get(RESULT_KEY)
        metrics = worker.peak_rss()
    metrics["published_late"] = published_late
    if ready_s is not None:
        metrics["all_ready_s"] = ready_s
    if raw is None:
        metrics["not_done_within_s"] = s.timeout
        return metrics
    result = json.loads(raw)  # type: ignore[arg-type]
    metrics.update(all_ran_s=result["last"] - due, first_ran_ms=(result["first"] - due) * 1000)
    return metrics


async def latency(s: Session) -> Metrics:
    """End-to-end latency (handler start - publish time) at a steady publish rate."""
    n, rate = int(s.params["n"]), float(s.params["rate"])
    with s.worker("latency", "default", n) as worker:
        await s.warm_up(worker)
        start = time.perf_counter()
        for i in range(n):
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            await s.adapter.publish("bench.noop", {"i": i, "t": time.time()}, None)
        achieved = n / (time.perf_counter() - start)
        result = await s.wait_done(worker, worker.spec.shared)
        metrics = worker.peak_rss()
    samples = [x * 1000 for x in result["samples"]]
    metrics.update(
        latency_p50_ms=percentile(samples, 50),
        latency_p99_ms=percentile(samples, 99),
        latency_mean_ms=statistics.fmean(samples),
        achieved_rate=achieved,
    )
    return metrics


WORKLOADS: dict[str, Callable[[Session], Awaitable[Metrics]]] = {
    "pubdrain": pubdrain,
    "io": io,
    "delay_spread": delay_spread,
    "delay_instant": delay_instant,
    "latency": latency,
}


def emit(payload: dict[str, Any]) -> None:
    """The one JSON line the orchestrator reads."""
    sys.stdout.write("\n" + json.dumps(payload) + "\n")
    sys.stdout.flush()


async def _run(adapter: Adapter, workload: str, redis_url: str, params: Params) -> Metrics:
    if workload in adapter.skips:
        raise Skip(adapter.skips[workload])
    session = Session(adapter, redis_url, params)
    await adapter.open(redis_url)
    try:
        return await WORKLOADS[workload](session)
    finally:
        await adapter.close()
        session.redis.close()


def main(adapter: Adapter) -> None:
    """Command-line entry point of a peer script."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--describe", action="store_true")
    parser.add_argument("--workload", choices=sorted(WORKLOADS))
    parser.add_argument("--redis-url")
    parser.add_argument("--params", default="{}")
    args = parser.parse_args()
    if args.describe:
        emit(
            {
                "ok": True,
                "variants": adapter.variants,
                "skips": adapter.skips,
                "batch_api": adapter.batch_api,
            }
        )
        return
    try:
        metrics = asyncio.run(_run(adapter, args.workload, args.redis_url, json.loads(args.params)))
    except Skip as exc:
        emit({"ok": False, "skipped": str(exc)})
    except Exception as exc:
        traceback.print_exc()
        emit({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})
    else:
        emit({"ok": True, "metrics": metrics})
