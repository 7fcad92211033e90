"""Progress that running handlers report (``event.progress()``), in Redis for whoever looks:
``Q:progress:<job id>`` holds the last report as JSON for an hour (renewed by each report) and
is removed when the job ends. The dashboard's event view reads it; a Celery client reads the
same report from the result backend (``results.progress_meta``), written beside it."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from earnorm.events._broker.keys import Keys

# A report outlives a consumer killed mid-job by this long at most.
PROGRESS_TTL_S = 3600


class ProgressStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def write(self, job_id: str, report: bytes) -> None:
        await self.redis.set(self.keys.progress(job_id), report, ex=PROGRESS_TTL_S)

    async def read(self, job_id: str) -> dict[str, Any] | None:
        """The last report for that job while it runs, or None."""
        raw = await self.redis.get(self.keys.progress(job_id))
        return None if raw is None else dict(orjson.loads(raw))

    async def clear(self, job_id: str) -> None:
        await self.redis.delete(self.keys.progress(job_id))
