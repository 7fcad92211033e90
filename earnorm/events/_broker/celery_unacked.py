"""Celery's own in-flight store in a mixed fleet: ``unacked`` (delivery tag -> ``[envelope,
exchange, routing_key]``) and ``unacked_index`` (tag -> unix seconds it was taken), docs/wire.md
section 8. A Celery worker killed with SIGKILL leaves its entries there; Celery restores them
after ``visibility_timeout``, but only while some Celery worker runs. EarnORM's consumers do the
same for their own queue: entries older than ``event_config["celery_visibility_timeout"]``
whose routing key is this queue go back to it, under Celery's ``unacked_mutex`` so that a Celery
worker's sweep and ours never restore the same entry twice.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from redis.asyncio import Redis

from earnorm._config import EventConfig
from earnorm.events._broker.keys import UNACKED, UNACKED_INDEX, UNACKED_MUTEX, Keys, text
from earnorm.events._broker.topology import is_cluster

_MUTEX_MS = 300_000  # kombu's unacked_mutex_expire
_BATCH = 100

# KEYS: unacked, unacked index, destination list. ARGV: tag, cutoff (unix s), envelope.
# Moves the entry only if it is still there and still old: a Celery worker may have acked it.
_RESTORE_ONE = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: mutex. ARGV: token. Release only our own lock.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class CeleryUnacked:
    def __init__(self, redis: Redis, keys: Keys, config: EventConfig) -> None:
        self.redis = redis
        self.keys = keys
        self.visibility_timeout = config.celery_visibility_timeout
        self._restore_one = redis.register_script(_RESTORE_ONE)
        self._release = redis.register_script(_RELEASE)

    async def restore_expired(self, now_s: float) -> int:
        """Restore this queue's entries older than the visibility timeout; returns how many.
        Not on a Redis Cluster: Celery's unacked keys are global (their own slots), and Celery
        does not run on a cluster anyway (celery#2852)."""
        if is_cluster(self.redis):
            return 0
        cutoff = now_s - self.visibility_timeout
        tags: list[bytes] = await self.redis.zrangebyscore(  # type: ignore[assignment]
            UNACKED_INDEX, "-inf", cutoff, start=0, num=_BATCH)
        if not tags:
            return 0
        token = uuid.uuid4().hex
        if not await self.redis.set(UNACKED_MUTEX, token, nx=True, px=_MUTEX_MS):
            return 0  # a Celery worker (or another consumer) is sweeping right now
        restored = 0
        try:
            for tag in tags:
                value = await self.redis.hget(UNACKED, tag)
                target = self._restored_form(value)
                if target is None:
                    continue
                envelope, key = target
                restored += int(await self._restore_one(
                    keys=[UNACKED, UNACKED_INDEX, key], args=[tag, cutoff, envelope]
                ))
        finally:
            await self._release(keys=[UNACKED_MUTEX], args=[token])
        return restored

    def _restored_form(self, value: Any) -> tuple[bytes, str] | None:
        """The envelope as Celery restores it (``redelivered`` flags) and the list it goes to,
        or None for an entry of another queue (left to Celery) or one we cannot read."""
        if value is None:
            return None
        try:
            envelope, _exchange, routing_key = orjson.loads(value)
            if text(routing_key) != self.keys.queue or not isinstance(envelope, dict):
                return None
            envelope.setdefault("headers", {})["redelivered"] = True
            properties = envelope.setdefault("properties", {})
            properties.setdefault("delivery_info", {})["redelivered"] = True
            priority = properties.get("priority")
            index = self.keys.ready_index(priority if isinstance(priority, int) else 0)
        except (ValueError, TypeError, AttributeError):
            return None
        return orjson.dumps(envelope), self.keys.ready[index]
