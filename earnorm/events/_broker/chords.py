"""Joining a Celery ``chord`` in the Redis result backend, the way Celery 5.7's Redis backend
does, so EarnORM consumers and Celery workers can each finish parts of one chord.

A Celery client applying ``chord(header)(body)`` writes the header's size to
``celery-taskset-meta-<group id>.s`` and sends each header task with the group id, its index and
the body in ``embed["chord"]``. Each finished part adds ``[1, task id, state, result]`` to the
ordered set ``.j`` (scored by its index; ``.d`` remembers ``<task id>:<index>`` so a redelivered
part counts once); the part that completes the count claims ``.c`` (``SET NX`` with a token),
publishes the body with the list of results as its first argument, then deletes the chord's keys
and leaves ``.c`` = ``done`` so a late duplicate cannot start it again. ``.t`` (a size change
Celery may record) is added to the size. A failed part makes the body fail with ``ChordError``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from earnorm.events._broker.keys import GROUP_PREFIX

_FAILED_STATES = frozenset({"FAILURE", "REVOKED"})
_CLAIM_S = 30
_DONE_S = 300

# KEYS: .j .t .s .d .c  ARGV: task id, entry, index, expires s, claim s, token.
# Returns {ready count, 1 if this call claimed the completion}; {-1, 0} once the chord is done.
_PART = """
if redis.call('GET', KEYS[5]) == 'done' then return {-1, 0} end
local member = ARGV[1] .. ':' .. ARGV[3]
if redis.call('SISMEMBER', KEYS[4], member) == 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('SADD', KEYS[4], member)
end
local ready = redis.call('ZCARD', KEYS[1])
local expires = tonumber(ARGV[4])
if expires > 0 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], expires) end
end
local size = redis.call('GET', KEYS[3])
local diff = redis.call('GET', KEYS[2])
if size and ready == tonumber(size) + tonumber(diff or 0) then
  if redis.call('SET', KEYS[5], ARGV[6], 'NX', 'EX', tonumber(ARGV[5])) then
    return {ready, 1}
  end
end
return {ready, 0}
"""

# KEYS: .c .j .t .s .d  ARGV: token, done expires s. Only the claim's owner cleans up.
_CLEANUP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[1], 'done', 'EX', tonumber(ARGV[2]))
return 1
"""


@dataclass(frozen=True, slots=True)
class Completed:
    """This part completed the chord: publish the body (``results``), or fail it
    (``failed``: the first failed part's task id and error), then ``release``."""

    group_id: str
    token: str
    results: list[Any]
    failed: tuple[str, Any] | None


class ChordJoin:
    def __init__(self, redis: Redis, expires: float) -> None:
        self.redis = redis
        self.expires = int(expires)
        self._part = redis.register_script(_PART)
        self._cleanup = redis.register_script(_CLEANUP)

    def _keys(self, group_id: str, *suffixes: str) -> list[str]:
        return [f"{GROUP_PREFIX}{group_id}{s}" for s in suffixes]

    async def part_done(
        self, group_id: str, task_id: str, index: int, state: str, result: Any
    ) -> Completed | None:
        """Record one finished header part; a ``Completed`` if it completed the chord."""
        token = uuid.uuid4().hex
        entry = orjson.dumps([1, task_id, state, result])
        ready, claimed = await self._part(
            keys=self._keys(group_id, ".j", ".t", ".s", ".d", ".c"),
            args=[task_id, entry, index, self.expires, _CLAIM_S, token])
        if int(ready) < 0 or not int(claimed):
            return None
        entries: list[bytes] = await self.redis.zrange(  # type: ignore[assignment]
            self._keys(group_id, ".j")[0], 0, -1)
        results: list[Any] = []
        for raw in entries:
            _, part_id, part_state, value = orjson.loads(raw)
            if part_state in _FAILED_STATES:
                return Completed(group_id, token, [], (part_id, value))
            results.append(value)
        return Completed(group_id, token, results, None)

    async def release(self, done: Completed) -> bool:
        """Delete the chord's keys and mark it done, if this claim still owns it."""
        return bool(await self._cleanup(
            keys=self._keys(done.group_id, ".c", ".j", ".t", ".s", ".d"),
            args=[done.token, _DONE_S]))
