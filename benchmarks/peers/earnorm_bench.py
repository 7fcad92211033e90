"""EarnORM peer: publishes with ``EventBus``, runs ``earnorm_worker.py`` (one ``Consumer``).

Runs in the project's venv against the working tree's ``earnorm`` package. While the core API
(``earnorm.events.EventBus``, ``Event``, ``Consumer``, ``HandlerRegistry``) is not importable,
every workload reports itself skipped with the import error as the reason.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from benchlib import EARNORM_TREE, WORKLOADS, main
from procs import WorkerSpec

sys.path.insert(0, EARNORM_TREE)  # the repo's earnorm/, or a baseline's (run.py --baseline)

_CONCURRENCY = {"default": "default", "tuned": "256", "io": "1000"}


def _import_error() -> str | None:
    try:
        from earnorm import Consumer, Event, EventBus, HandlerRegistry  # noqa: F401
    except Exception as exc:
        return f"earnorm core not available yet ({type(exc).__name__}: {exc})"
    return None


class EarnormAdapter:
    def __init__(self) -> None:
        self.name = "earnorm"
        self.variants = {
            "drain": {"default": "Consumer default", "tuned": "concurrency 256"},
            "io": {"io": "concurrency 1000"},
        }
        reason = _import_error()
        self.skips = dict.fromkeys(WORKLOADS, reason) if reason else {}
        self.batch_api = "EventBus.publish_batch"

    async def open(self, redis_url: str) -> None:
        from earnorm import Event, EventBus

        self.event_type = Event
        import redis.asyncio

        self.bus = await EventBus.connect(redis_url, queue_name="bench")
        self.redis = redis.asyncio.Redis.from_url(redis_url)

    async def close(self) -> None:
        await self.bus.close()
        await self.redis.aclose()

    async def publish(self, task: str, data: dict[str, Any], due: float | None) -> None:
        delay = None if due is None else max(0.0, due - time.time())
        await self.bus.publish(self.event_type(name=task, data=data), delay=delay)

    async def publish_batch(self, task: str, items: list[dict[str, Any]]) -> None:
        await self.bus.publish_batch([self.event_type(name=task, data=data) for data in items])

    def worker(self, workload: str, variant: str) -> WorkerSpec:
        argv = [sys.executable, "earnorm_worker.py", _CONCURRENCY.get(variant, "default")]
        return WorkerSpec(argv=argv)

    async def delayed_pending(self) -> int | None:
        # DESIGN.md: delayed events wait in the ``<queue>:delayed`` sorted set.
        return int(await self.redis.zcard("bench:delayed"))


if __name__ == "__main__":
    main(EarnormAdapter())
