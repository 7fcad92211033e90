"""``env.cache``: a small key-value cache on the event bus's Redis, values written as the wire
writes event data (kombu's tagging of dates, decimals, UUIDs, bytes). Keys live under the
queue's ``Q:cache:`` prefix (``Keys.cache_prefix``) unless ``init()`` names another."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
from redis.asyncio import Redis

from earnorm._errors import ConfigError
from earnorm.events._wire.kombu_types import from_wire, to_wire


class Cache:
    """A small async key/value cache on Redis. Values are JSON data plus datetime, date, time,
    Decimal, UUID and bytes (the event wire's types); keys are namespaced by ``prefix``::

        await env.cache.set("user:42", {"name": "Ann"}, ttl=300)
        await env.cache.get("user:42")     # {'name': 'Ann'}
        await env.cache.delete("user:42")  # 1
    """

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"cache keys must be non-empty strings, got {key!r}")
        return self.prefix + key

    async def get(self, key: str, default: Any = None) -> Any:
        raw = await self.redis.get(self._key(key))
        return default if raw is None else from_wire(orjson.loads(raw))

    async def set(self, key: str, value: Any, ttl: float | timedelta | None = None) -> None:
        """Store ``value``; with ``ttl`` (seconds or timedelta) it expires."""
        raw = orjson.dumps(to_wire(value, f"cache[{key!r}]"))
        if ttl is None:
            await self.redis.set(self._key(key), raw)
            return
        seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ConfigError(f"cache ttl must be a positive number of seconds, got {ttl!r}")
        await self.redis.set(self._key(key), raw, px=max(1, round(seconds * 1000)))

    async def delete(self, *keys: str) -> int:
        """Remove keys; returns how many existed."""
        if not keys:
            return 0
        return int(await self.redis.delete(*(self._key(k) for k in keys)))
