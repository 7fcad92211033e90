"""``idempotent=True`` handlers: an event id a handler already handled successfully, within its
``idempotency_ttl``, is skipped for that handler.

At-least-once delivery may run a handler twice for one event (its consumer died holding it, a
publisher retried, an outbox entry was relayed twice). A mark ``Q:done:<handler>:<event id>`` is
set after each success and checked before each run, so a duplicate does not repeat the side
effect. The window left: a consumer that dies between the handler's success and the mark (one
round trip) runs it again. The cost: two Redis round trips per run of such a handler.
"""

from __future__ import annotations

from redis.asyncio import Redis

from earnorm.events._broker.keys import Keys


class DoneMarks:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def seen(self, handler: str, event_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.done(handler, event_id)))

    async def mark(self, handler: str, event_id: str, ttl: float) -> None:
        await self.redis.set(self.keys.done(handler, event_id), b"1", px=max(1, int(ttl * 1000)))
