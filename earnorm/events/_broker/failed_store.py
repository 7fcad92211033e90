"""The failed-job (dead-letter) store of one queue: ``Q:failed`` (hash job id -> JSON record)
and ``Q:failed:index`` (zset by failure time, for paging). Writing a record happens in the
broker's settle transaction; this module reads, removes and requeues them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from earnorm.events._broker.keys import Keys, text

# KEYS: failed, failed index, ready lists by index. ARGV: (job id, list index, envelope)...
# A job is pushed back only if its record was still there: retrying a job twice at once, or
# retrying one that was just removed, cannot put it on the queue twice.
_REQUEUE_FAILED = """
local pushed = 0
for i = 1, #ARGV, 3 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('LPUSH', KEYS[3 + tonumber(ARGV[i + 1])] or KEYS[3], ARGV[i + 2])
    pushed = pushed + 1
  end
end
return pushed
"""


# KEYS: failed, failed index, oversized (earlier versions' hash), main ready list, the aside
# set, the job's aside key. ARGV: job id. Kept aside in its own key, the message moves back
# natively (RPOPLPUSH: no script reads it); from the old hash it is read once more.
_REQUEUE_OVERSIZED = """
if redis.call('EXISTS', KEYS[6]) == 1 then
  if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[5], ARGV[1])
  redis.call('RPOPLPUSH', KEYS[6], KEYS[4])
  return 1
end
local v = redis.call('HGET', KEYS[3], ARGV[1])
if not v or redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('LPUSH', KEYS[4], v)
return 1
"""

# KEYS: inflight, deliveries, the held key, the job's aside key, failed, failed index, the
# aside set, stats. ARGV: field, job id, record. A held message found too large once read:
# set aside by RENAME (its bytes are not read again), recorded; only if the field is ours.
_SET_ASIDE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
redis.call('RENAME', KEYS[3], KEYS[4])
local t = redis.call('TIME')
redis.call('HSET', KEYS[5], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[6], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[2])
redis.call('SADD', KEYS[7], ARGV[2])
redis.call('HINCRBY', KEYS[8], 'failed', 1)
return 1
"""

# Aside keys one purge call unlinks at most (UNLINK frees them in the background).
_UNLINK_BATCH = 500


class FailedStore:
    """Reading and managing failed jobs. Stateless apart from the client."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._requeue = redis.register_script(_REQUEUE_FAILED)
        self._requeue_oversized = redis.register_script(_REQUEUE_OVERSIZED)
        self._set_aside = redis.register_script(_SET_ASIDE)


    async def page(
        self, after: tuple[float, str] | None, count: int
    ) -> list[tuple[str, float, bytes | None]]:
        """Up to ``count`` failed jobs in failure order, after position ``after`` (failed ms,
        job id; None = from the start): (job id, failed ms, record) each.

        The position is a score and a member, not an offset, so removing or retrying jobs while
        paging neither skips nor repeats any. Equal scores are ordered by id, as in the zset.
        """
        low: float | str = "-inf" if after is None else after[0]
        skip = 0
        while True:
            ids: Any = await self.redis.zrangebyscore(
                self.keys.failed_index, low, "+inf", start=skip, num=count, withscores=True
            )
            page = [(text(i), float(score)) for i, score in ids]
            if after is not None:
                page = [(i, sc) for i, sc in page if (sc, i) > (after[0], after[1])]
            if page or len(ids) < count:
                break
            skip += len(ids)  # a whole page tied with ``after``: look further
        if not page:
            return []
        records: Any = await self.redis.hmget(self.keys.failed, [i for i, _ in page])
        return [(i, sc, r) for (i, sc), r in zip(page, records, strict=True)]

    async def get(self, job_id: str) -> bytes | None:
        result = await self.redis.hget(self.keys.failed, job_id)
        return result if isinstance(result, bytes) or result is None else result.encode()

    async def remove(self, job_id: str) -> bool:
        return await self.remove_many([job_id]) == 1

    async def remove_many(self, job_ids: Sequence[str]) -> int:
        """Delete failed jobs' records; returns how many existed."""
        if not job_ids:
            return 0
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.failed, *job_ids)
            pipe.zrem(self.keys.failed_index, *job_ids)
            pipe.hdel(self.keys.oversized, *job_ids)
            pipe.srem(self.keys.aside, *job_ids)
            pipe.unlink(*(self.keys.aside_of(j) for j in job_ids))
            removed, *_ = await pipe.execute()
        return int(removed)

    async def purge(self) -> int:
        """Delete every failed job; returns how many there were."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hlen(self.keys.failed)
            # UNLINK: the records are freed by Redis in the background (DEL of 100k of them
            # would block every client while it frees them).
            pipe.unlink(self.keys.failed, self.keys.failed_index, self.keys.oversized)
            count, _ = await pipe.execute()
        # The messages kept aside, a bounded batch at a time (each is over max_message_bytes,
        # so there are never many).
        while ids := await self._spop_aside():
            await self.redis.unlink(*(self.keys.aside_of(i) for i in ids))
        return int(count)

    async def _spop_aside(self) -> list[str]:
        ids: Any = await self.redis.spop(self.keys.aside, _UNLINK_BATCH)
        return [text(i) for i in ids or ()]

    async def requeue_oversized(self, job_id: str) -> bool:
        """Put a ``too_large`` job's message, kept aside in Redis, back on the main ready list
        (it never travels through this process). It is diverted again unless the consumers'
        max_message_bytes was raised meanwhile."""
        k = self.keys
        keys = [k.failed, k.failed_index, k.oversized, k.ready[0], k.aside, k.aside_of(job_id)]
        return bool(await self._requeue_oversized(keys=keys, args=[job_id]))

    async def set_aside(self, inflight: str, deliveries: str, held: str, field: int,
                        job_id: str, record: bytes) -> bool:
        """A held message found over max_message_bytes once read: kept aside by renaming its
        key, and recorded as ``too_large``. False if the field was no longer ours."""
        k = self.keys
        keys = [inflight, deliveries, held, k.aside_of(job_id), k.failed, k.failed_index,
                k.aside, k.stats]
        return bool(await self._set_aside(keys=keys, args=[field, job_id, record]))

    async def aside_message(self, job_id: str) -> bytes | None:
        """The message kept aside for ``job_id`` (``Q:aside:<job id>``); None if there is none."""
        raw: Any = await self.redis.lindex(self.keys.aside_of(job_id), 0)
        return raw if isinstance(raw, bytes) or raw is None else raw.encode()

    async def requeue_aside(self, job_id: str, raw: bytes, ready_index: int) -> bool:
        """``requeue`` for a job whose message was kept aside (a large one, dead-lettered while
        held): ``raw``, its fresh envelope, is pushed by a plain LPUSH in a transaction, never
        through a script (whose time would grow with it). The transaction runs only if the
        aside key was not touched since it was read: a job retried or removed concurrently is
        not pushed twice (False)."""
        k = self.keys
        aside = k.aside_of(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(aside)
            if not await pipe.exists(aside):
                return False
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hdel(k.failed, job_id)
            pipe.zrem(k.failed_index, job_id)
            pipe.srem(k.aside, job_id)
            pipe.unlink(aside)
            pipe.lpush(k.ready[ready_index], raw)
            try:
                await pipe.execute()
            except WatchError:
                return False
        return True

    async def requeue(self, job_id: str, raw: bytes, ready_index: int) -> bool:
        """Put a failed job's message back on the queue and drop its record, atomically."""
        return await self.requeue_many([(job_id, raw, ready_index)]) == 1

    async def requeue_many(self, jobs: Sequence[tuple[str, bytes, int]]) -> int:
        """``failed_requeue`` for many (job id, envelope, ready index); returns how many."""
        if not jobs:
            return 0
        args: list[str | bytes | int] = []
        for job_id, raw, ready_index in jobs:
            args += [job_id, ready_index, raw]
        keys = [self.keys.failed, self.keys.failed_index, *self.keys.ready]
        return int(await self._requeue(keys=keys, args=args))
