"""Everything that knows Redis key names and Lua scripts lives here, and only here.

Keys for queue ``Q`` (all prefixed by ``Q``, so a hash-tagged name like ``{app}:events`` keeps
every key in one Redis Cluster slot):

- ``Q``, ``Q\\x06\\x163``, ``Q\\x06\\x166``, ``Q\\x06\\x169``: Celery's ready lists, served in that
  order (lower number first). Publishers LPUSH; consumers take from the right (FIFO).
- ``Q:delayed``: zset of ``b"<list index>:" + envelope`` scored by due time (unix ms).
- ``Q:consumers``: zset of consumer id scored by heartbeat deadline (unix ms, Redis clock).
- ``Q:inflight:<consumer>``: hash of field -> envelope, what that consumer holds.
- ``Q:landing:<consumer>``: list that the blocking wait moves one message into.
- ``Q:failed`` (hash job id -> JSON record) and ``Q:failed:index`` (zset by failure time):
  written here in the settle transaction, read and managed by ``_failed_store.FailedStore``.
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
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from earnorm._config import EventConfig
from earnorm.events._failed_store import FailedStore
from earnorm.events._keys import Keys, delayed_member, text

# Errors that mean "Redis could not be reached or did not answer in time": the operation may
# succeed if tried again later, and callers back off and retry. Any other RedisError is an
# answer (the server refused the command) and is not retried blindly.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, OSError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection-level failure worth retrying (see ``TRANSIENT_ERRORS``).

    >>> is_transient(RedisConnectionError("refused")), is_transient(ValueError())
    (True, False)
    """
    return isinstance(exc, TRANSIENT_ERRORS)

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
        self.failed = FailedStore(redis, self.keys)

    async def server_time_ms(self) -> float:
        """Redis's clock, in unix ms."""
        seconds, micros = await self.redis.time()
        return float(seconds * 1000 + micros / 1000)

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
        return float(result[0]), [text(x) for x in result[1:]]

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
            pipe.exists(*self.keys.ready, self.keys.delayed, self.keys.consumers,
                        self.keys.failed, self.keys.stats, self.keys.monitor)
            results = await pipe.execute()
        seconds, micros = results[0]
        ready, oldest = results[1:n + 1], results[n + 1:2 * n + 1]
        delayed, next_delayed, failed, consumers, counters, monitor, seen = results[2 * n + 1:]
        inflight = 0
        if consumers:
            async with self.redis.pipeline(transaction=False) as pipe:
                for cid, _ in consumers:
                    pipe.hlen(self.keys.inflight(text(cid)))
                    pipe.llen(self.keys.landing(text(cid)))
                inflight = sum(await pipe.execute())
        return {
            "now_ms": seconds * 1000 + micros / 1000,
            "ready": {step: int(c) for step, c in zip(self.keys.steps, ready, strict=True)},
            "oldest_ready": [m for m in oldest if m is not None],
            "delayed": int(delayed),
            "next_delayed_ms": float(next_delayed[0][1]) if next_delayed else None,
            "failed": int(failed),
            "inflight": int(inflight),
            "consumers": {text(cid): float(deadline) for cid, deadline in consumers},
            "counters": {text(k): int(v) for k, v in counters.items()},
            "monitor": {text(k): v for k, v in monitor.items()},
            "seen": bool(seen),
        }


