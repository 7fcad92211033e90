"""Everything that knows Redis key names and Lua scripts lives here, and only here.

Keys for queue ``Q`` (all prefixed by ``Q``, so a hash-tagged name like ``{app}:events`` keeps
every key in one Redis Cluster slot):

- ``Q``, ``Q\\x06\\x163``, ``Q\\x06\\x166``, ``Q\\x06\\x169``: Celery's ready lists, served in that
  order (lower number first). Publishers LPUSH; consumers take from the right (FIFO).
- ``Q:delayed``: zset of ``b"<list index>:" + envelope`` scored by due time (unix ms).
- ``Q:consumers``: zset of consumer id scored by heartbeat deadline (unix ms, Redis clock).
- ``Q:inflight:<consumer>``: hash of field -> envelope, what that consumer holds.
- ``Q:landing:<consumer>``: list that the blocking wait moves one message into.
- ``Q:failed`` (hash job id -> JSON record) and ``Q:failed:index`` (zset by failure time).
- ``Q:stats``: hash of counters (processed, failed, retried). A retry or dead-letter counts in
  its own transaction; handled events are counted by the consumer's next fetch script (no round
  trip of their own, at most ``poll_interval`` late).
- ``Q:monitor``: hash of consumer id -> JSON summary (last heartbeat, recent processing times),
  rewritten by each consumer on its heartbeat.

Ready -> in-flight is always a move inside Redis (a Lua script or BLMOVE), never a pop into
client memory, so a consumer killed at any instant loses nothing: its in-flight hash and landing
list are handed back by a live consumer once its heartbeat deadline passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from earnorm._config import EventConfig

# Redis 7 runs scripts with effects replication, so TIME may be read before writing; on 5/6
# redis.replicate_commands() asks for it.
_NOW_MS = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: inflight, stats, landing, ready lists in serving order.
# ARGV: max count, first field number, events handled since the last fetch (for the counter).
# The landing list goes first: it holds what the blocking wait already moved to us.
_FETCH = """
local want = tonumber(ARGV[1])
local seq = tonumber(ARGV[2])
if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[2], 'processed', ARGV[3]) end
local out = {}
local fields = {}
for i = 3, #KEYS do
  local got = redis.call('RPOP', KEYS[i], want - #out)
  if got then
    for _, v in ipairs(got) do
      out[#out + 1] = v
      fields[#fields + 1] = seq + #out
      fields[#fields + 1] = v
    end
    if #out >= want then break end
  end
end
if #out > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
return out
"""

# KEYS: delayed, ready lists by index. ARGV: max count.
# Returns {moved, next due ms or -1, now ms}. Due messages go to the consuming (right) end so a
# backlog does not delay them further; pushed latest-first so the earliest is taken first.
_PROMOTE = _NOW_MS + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
  for i = #due, 1, -1 do
    local m = due[i]
    local sep = string.find(m, ':', 1, true)
    local index = tonumber(string.sub(m, 1, sep - 1)) or 0
    local key = KEYS[2 + index] or KEYS[2]
    redis.call('RPUSH', key, string.sub(m, sep + 1))
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, nxt[2] or '-1', now}
"""

# KEYS: consumers. ARGV: consumer id, timeout ms. Returns {now ms, expired ids...}.
_HEARTBEAT = _NOW_MS + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 1, 'LIMIT', 0, 16)
local out = {now}
for _, id in ipairs(dead) do out[#out + 1] = id end
return out
"""

# KEYS: consumers, inflight, landing, destination ready list, monitor.
# ARGV: consumer id, force (0/1).
# Hands every message the consumer holds back to the consuming end of the ready list, but only
# if it is still dead (or force, for a consumer returning its own work): two live consumers
# racing to recover the same one cannot both move its messages.
_RECOVER = _NOW_MS + """
if ARGV[2] ~= '1' then
  local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if deadline and tonumber(deadline) >= now then return -1 end
end
local moved = 0
local held = redis.call('HVALS', KEYS[2])
for _, v in ipairs(held) do redis.call('RPUSH', KEYS[4], v); moved = moved + 1 end
local landed = redis.call('LRANGE', KEYS[3], 0, -1)
for i = #landed, 1, -1 do redis.call('RPUSH', KEYS[4], landed[i]); moved = moved + 1 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
return moved
"""

# KEYS: inflight, destination ready list. ARGV: fields to hand back.
_RECLAIM = """
local moved = 0
for _, f in ipairs(ARGV) do
  local v = redis.call('HGET', KEYS[1], f)
  if v then
    redis.call('RPUSH', KEYS[2], v)
    redis.call('HDEL', KEYS[1], f)
    moved = moved + 1
  end
end
return moved
"""


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


@dataclass(frozen=True, slots=True)
class Keys:
    """Redis key names for one queue."""

    queue: str
    ready: tuple[str, ...]
    steps: tuple[int, ...]
    delayed: str
    consumers: str
    failed: str
    failed_index: str
    stats: str
    monitor: str

    @classmethod
    def for_queue(cls, config: EventConfig) -> Keys:
        q = config.queue_name
        ready = tuple(q if step == 0 else f"{q}{config.separator}{step}"
                      for step in config.priority_steps)
        return cls(
            queue=q,
            ready=ready,
            steps=config.priority_steps,
            delayed=f"{q}:delayed",
            consumers=f"{q}:consumers",
            failed=f"{q}:failed",
            failed_index=f"{q}:failed:index",
            stats=f"{q}:stats",
            monitor=f"{q}:monitor",
        )

    def inflight(self, consumer_id: str) -> str:
        return f"{self.queue}:inflight:{consumer_id}"

    def landing(self, consumer_id: str) -> str:
        return f"{self.queue}:landing:{consumer_id}"

    def ready_index(self, priority: int) -> int:
        """Celery's rule (wire.md 6): the largest step <= the priority clamped to 0..9."""
        if priority == 0:  # the publishing hot path
            return 0
        priority = min(max(priority, 0), 9)
        index = 0
        for i, step in enumerate(self.steps):
            if step <= priority:
                index = i
        return index


def delayed_member(raw: bytes, ready_index: int) -> bytes:
    return b"%d:%s" % (ready_index, raw)


def split_delayed_member(member: bytes) -> tuple[int, bytes]:
    index, _, raw = member.partition(b":")
    return int(index), raw


class Broker:
    """Thin async operations over one queue's keys. Stateless apart from the client."""

    def __init__(self, redis: Redis, config: EventConfig) -> None:
        self.redis = redis
        self.config = config
        self.keys = Keys.for_queue(config)
        self._fetch = redis.register_script(_FETCH)
        self._promote = redis.register_script(_PROMOTE)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._recover = redis.register_script(_RECOVER)
        self._reclaim = redis.register_script(_RECLAIM)
        self._requeue_failed = redis.register_script(_REQUEUE_FAILED)

    # ------------------------------------------------------------------ publishing

    async def push(self, raw: bytes, ready_index: int = 0) -> None:
        await self.redis.lpush(self.keys.ready[ready_index], raw)

    async def push_many(self, items: Sequence[tuple[bytes, int, float | None]]) -> None:
        """One round trip for a batch: (envelope, ready index, due ms or None) each."""
        async with self.redis.pipeline(transaction=True) as pipe:
            by_list: dict[int, list[bytes]] = {}
            delayed: dict[bytes, float] = {}
            for raw, index, due_ms in items:
                if due_ms is None:
                    by_list.setdefault(index, []).append(raw)
                else:
                    delayed[delayed_member(raw, index)] = due_ms
            for index, raws in by_list.items():
                pipe.lpush(self.keys.ready[index], *raws)
            if delayed:
                pipe.zadd(self.keys.delayed, delayed)
            await pipe.execute()

    async def schedule(self, raw: bytes, ready_index: int, due_ms: float) -> None:
        await self.redis.zadd(self.keys.delayed, {delayed_member(raw, ready_index): due_ms})

    # ------------------------------------------------------------------ consuming

    async def fetch(
        self, consumer_id: str, count: int, first_field: int, processed: int = 0
    ) -> list[bytes]:
        """Move up to ``count`` messages into the consumer's in-flight hash, atomically, and
        add ``processed`` to the counter.

        The i-th message returned is stored under field ``first_field + i + 1``.
        """
        keys = [
            self.keys.inflight(consumer_id), self.keys.stats, self.keys.landing(consumer_id),
            *self.keys.ready,
        ]
        result = await self._fetch(keys=keys, args=[count, first_field, processed])
        return list(result)

    async def wait_for_message(self, consumer_id: str, timeout: float) -> bool:
        """Block until a message is on the main ready list, then move it to our landing list.

        BLMOVE is atomic, so the message is never only in this process's memory.
        """
        moved = await self.redis.blmove(
            self.keys.ready[0], self.keys.landing(consumer_id),
            timeout,  # type: ignore[arg-type]  # Redis >= 6 takes fractional seconds
            "RIGHT", "LEFT",
        )
        return moved is not None

    async def ack(self, consumer_id: str, fields: Sequence[int]) -> None:
        await self.redis.hdel(self.keys.inflight(consumer_id), *map(str, fields))

    async def count_processed(self, processed: int) -> None:
        """Add to the counter what no fetch will carry (a consumer stopping)."""
        if processed:
            await self.redis.hincrby(self.keys.stats, "processed", processed)

    async def settle(
        self, consumer_id: str | None, field: int | None, *,
        retry: tuple[bytes, int, float] | None = None,
        dead: tuple[str, bytes, float] | None = None,
    ) -> None:
        """Ack ``field`` and, in the same transaction, schedule ``retry`` (envelope, ready index,
        due ms) in the delayed set and/or store ``dead`` (job id, record, failed ms) in the
        failed store; the counters follow in the same transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if retry is not None:
                raw, ready_index, due_ms = retry
                pipe.zadd(self.keys.delayed, {delayed_member(raw, ready_index): due_ms})
                pipe.hincrby(self.keys.stats, "retried", 1)
            if dead is not None:
                job_id, record, failed_ms = dead
                pipe.hset(self.keys.failed, job_id, record)
                pipe.zadd(self.keys.failed_index, {job_id: failed_ms})
                pipe.hincrby(self.keys.stats, "failed", 1)
            if consumer_id is not None and field is not None:
                pipe.hdel(self.keys.inflight(consumer_id), str(field))
            await pipe.execute()

    async def defer(
        self, consumer_id: str, field: int, raw: bytes, ready_index: int, due_ms: float
    ) -> None:
        """Ack ``field`` and schedule ``raw`` in the delayed set, in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.keys.delayed, {delayed_member(raw, ready_index): due_ms})
            pipe.hdel(self.keys.inflight(consumer_id), str(field))
            await pipe.execute()

    async def dead_letter(
        self, consumer_id: str | None, field: int | None, job_id: str, record: bytes,
        failed_ms: float,
    ) -> None:
        """Store the failed-job record and ack the message, in one transaction."""
        await self.settle(consumer_id, field, dead=(job_id, record, failed_ms))

    async def promote_due(self, limit: int = 500) -> tuple[int, float | None, float]:
        """Move due delayed messages to the ready lists. Returns (moved, next due ms, now ms)."""
        keys = [self.keys.delayed, *self.keys.ready]
        moved, next_due, now = await self._promote(keys=keys, args=[limit])
        nxt = float(next_due)
        return int(moved), (None if nxt < 0 else nxt), float(now)

    async def heartbeat(self, consumer_id: str, timeout_ms: int) -> tuple[float, list[str]]:
        """Extend our deadline. Returns (Redis now ms, ids of consumers past their deadline)."""
        result = await self._heartbeat(keys=[self.keys.consumers], args=[consumer_id, timeout_ms])
        return float(result[0]), [_text(x) for x in result[1:]]

    async def recover(self, consumer_id: str, *, force: bool = False) -> int:
        """Hand a dead consumer's messages back to the ready list; -1 if it is alive again."""
        keys = [
            self.keys.consumers,
            self.keys.inflight(consumer_id),
            self.keys.landing(consumer_id),
            self.keys.ready[0],
            self.keys.monitor,
        ]
        return int(await self._recover(keys=keys, args=[consumer_id, "1" if force else "0"]))

    async def reclaim(self, consumer_id: str, known: set[int]) -> int:
        """Hand back fields of our own in-flight hash that we do not know about."""
        fields = [int(f) for f in await self.redis.hkeys(self.keys.inflight(consumer_id))]
        orphans = [f for f in fields if f not in known]
        if not orphans:
            return 0
        return int(await self._reclaim(
            keys=[self.keys.inflight(consumer_id), self.keys.ready[0]], args=orphans
        ))

    async def unregister(self, consumer_id: str) -> None:
        await self.redis.zrem(self.keys.consumers, consumer_id)

    async def publish_summary(self, consumer_id: str, summary: bytes) -> None:
        await self.redis.hset(self.keys.monitor, consumer_id, summary)

    # ------------------------------------------------------------------ failed jobs

    async def failed_page(
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
            page = [(_text(i), float(score)) for i, score in ids]
            if after is not None:
                page = [(i, sc) for i, sc in page if (sc, i) > (after[0], after[1])]
            if page or len(ids) < count:
                break
            skip += len(ids)  # a whole page tied with ``after``: look further
        if not page:
            return []
        records: Any = await self.redis.hmget(self.keys.failed, [i for i, _ in page])
        return [(i, sc, r) for (i, sc), r in zip(page, records, strict=True)]

    async def failed_get(self, job_id: str) -> bytes | None:
        result = await self.redis.hget(self.keys.failed, job_id)
        return result if isinstance(result, bytes) or result is None else result.encode()

    async def failed_remove(self, job_id: str) -> bool:
        return await self.failed_remove_many([job_id]) == 1

    async def failed_remove_many(self, job_ids: Sequence[str]) -> int:
        """Delete failed jobs' records; returns how many existed."""
        if not job_ids:
            return 0
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.failed, *job_ids)
            pipe.zrem(self.keys.failed_index, *job_ids)
            removed, _ = await pipe.execute()
        return int(removed)

    async def failed_purge(self) -> int:
        """Delete every failed job; returns how many there were."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hlen(self.keys.failed)
            pipe.delete(self.keys.failed, self.keys.failed_index)
            count, _ = await pipe.execute()
        return int(count)

    async def failed_requeue(self, job_id: str, raw: bytes, ready_index: int) -> bool:
        """Put a failed job's message back on the queue and drop its record, atomically."""
        return await self.failed_requeue_many([(job_id, raw, ready_index)]) == 1

    async def failed_requeue_many(self, jobs: Sequence[tuple[str, bytes, int]]) -> int:
        """``failed_requeue`` for many (job id, envelope, ready index); returns how many."""
        if not jobs:
            return 0
        args: list[str | bytes | int] = []
        for job_id, raw, ready_index in jobs:
            args += [job_id, ready_index, raw]
        keys = [self.keys.failed, self.keys.failed_index, *self.keys.ready]
        return int(await self._requeue_failed(keys=keys, args=args))

    # ------------------------------------------------------------------ counts

    async def snapshot(self) -> dict[str, Any]:
        """Everything ``stats()`` needs, read in two pipelined round trips."""
        n = len(self.keys.ready)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            for key in self.keys.ready:
                pipe.llen(key)
            for key in self.keys.ready:
                pipe.lindex(key, -1)  # the oldest waiting message: consumers take from the right
            pipe.zcard(self.keys.delayed)
            pipe.zrange(self.keys.delayed, 0, 0, withscores=True)
            pipe.hlen(self.keys.failed)
            pipe.zrange(self.keys.consumers, 0, -1, withscores=True)
            pipe.hgetall(self.keys.stats)
            pipe.hgetall(self.keys.monitor)
            results = await pipe.execute()
        seconds, micros = results[0]
        ready, oldest = results[1:n + 1], results[n + 1:2 * n + 1]
        delayed, next_delayed, failed, consumers, counters, monitor = results[2 * n + 1:]
        inflight = 0
        if consumers:
            async with self.redis.pipeline(transaction=False) as pipe:
                for cid, _ in consumers:
                    pipe.hlen(self.keys.inflight(_text(cid)))
                    pipe.llen(self.keys.landing(_text(cid)))
                inflight = sum(await pipe.execute())
        return {
            "now_ms": seconds * 1000 + micros / 1000,
            "ready": {step: int(c) for step, c in zip(self.keys.steps, ready, strict=True)},
            "oldest_ready": [m for m in oldest if m is not None],
            "delayed": int(delayed),
            "next_delayed_ms": float(next_delayed[0][1]) if next_delayed else None,
            "failed": int(failed),
            "inflight": int(inflight),
            "consumers": {_text(cid): float(deadline) for cid, deadline in consumers},
            "counters": {_text(k): int(v) for k, v in counters.items()},
            "monitor": {_text(k): v for k, v in monitor.items()},
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
