"""Revoked task ids, in Redis: shared by every consumer of a queue and kept across restarts
(a Celery worker keeps them in its own memory, so a restart forgets them: celery#8888).

``Q:revoked`` holds each id by the time its revoke expires (unix ms); ``Q:revoked:terminate``
those whose running handler is to be cancelled too. ``Q:stats`` field ``revoked_seq`` grows
with every change, so a consumer reloads the set only when it changed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis

from earnorm.events._broker.celery_presence import (
    database_of,
    mailbox_channel,
    revoke_broadcast,
)
from earnorm.events._broker.keys import Keys, text
from earnorm.events._broker.topology import is_cluster

# How long a revoke holds, as Celery's worker keeps its revoked ids (REVOKE_EXPIRES, 3 hours).
REVOKE_EXPIRES_S = 10800.0
# Expired ids removed per write at most, so a write never works through a huge backlog.
_PRUNE_MOST = 500

# KEYS: revoked, revoked-terminate, stats. ARGV: now ms, expires ms, terminate (0/1), ids.
_REVOKE = """
local now = tonumber(ARGV[1])
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
  if ARGV[3] == '1' then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[i]) end
end
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  local old = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0,
                         """ + str(_PRUNE_MOST) + """)
  if #old > 0 then redis.call('ZREM', key, unpack(old)) end
end
return redis.call('HINCRBY', KEYS[3], 'revoked_seq', 1)
"""


class RevokedStore:
    """The queue's revoked ids."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._revoke = redis.register_script(_REVOKE)

    async def add(self, task_ids: Iterable[str], *, terminate: bool = False,
                  expires_s: float = REVOKE_EXPIRES_S) -> None:
        ids = [str(i) for i in task_ids]
        if not ids:
            return
        now = time.time() * 1000
        k = self.keys
        await self._revoke(keys=[k.revoked, k.revoked_terminate, k.stats],
                           args=[now, now + expires_s * 1000, 1 if terminate else 0, *ids])

    async def seq(self) -> int:
        """Grows with every revoke: reload when it changed."""
        return int(await self.redis.hget(self.keys.stats, "revoked_seq") or 0)

    async def load(self) -> tuple[dict[str, float], set[str]]:
        """Revoked ids still in force (id -> expiry, unix ms), and those to terminate."""
        now = time.time() * 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(self.keys.revoked, now, "+inf", withscores=True)
            pipe.zrangebyscore(self.keys.revoked_terminate, now, "+inf")
            revoked, terminate = await pipe.execute()
        return ({text(i): float(s) for i, s in revoked}, {text(i) for i in terminate})

    async def which(self, task_ids: Sequence[str]) -> set[str]:
        """Those of ``task_ids`` revoked and in force (one ZSCORE each, pipelined: a bounded
        look however many ids are revoked)."""
        if not task_ids:
            return set()
        now = time.time() * 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.zscore(self.keys.revoked, task_id)
            scores = await pipe.execute()
        return {i for i, score in zip(task_ids, scores, strict=True)
                if score is not None and float(score) > now}

    async def broadcasts(self) -> Any:
        """A pub/sub subscribed to Celery's remote-control channel (its ``revoke``
        broadcasts); the caller reads it with ``get_message`` and closes it. None on a Redis
        Cluster (Celery does not run there; consumers follow the shared set alone)."""
        if is_cluster(self.redis):
            return None
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(mailbox_channel(database_of(self.redis)))
        return pubsub

    async def broadcast(self, task_ids: list[str], *, terminate: bool) -> None:
        """Celery's ``revoke`` broadcast on its remote-control channel: Celery workers and
        EarnORM consumers listening act on it at once."""
        await self.redis.publish(mailbox_channel(database_of(self.redis)),
                                 revoke_broadcast(task_ids, terminate=terminate))
