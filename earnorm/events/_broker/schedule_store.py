"""Where periodic schedules keep their state in Redis (``Q:schedules``, ``Q:schedules:info``),
and the compare-and-set that makes each tick fire once across every consumer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from earnorm.events._broker.keys import Keys, text

# KEYS: schedules hash, info hash, the ready list; ARGV: name, the last tick the caller read
# ('' for none), the new last tick (ms), info JSON, envelopes to push. The tick advances, and its
# events are pushed, only if nobody advanced it since the caller read it: 1, else 0.
_ADVANCE = """
local last = redis.call('HGET', KEYS[1], ARGV[1])
if (last or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
for i = 5, #ARGV do redis.call('LPUSH', KEYS[3], ARGV[i]) end
return 1
"""


class ScheduleStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._advance = redis.register_script(_ADVANCE)

    async def lasts(self, names: Sequence[str]) -> dict[str, str | None]:
        """The last tick (as stored, ms) of each schedule, None for one never seen."""
        values = await self.redis.hmget(self.keys.schedules, list(names))
        return {name: None if v is None else text(v) for name, v in zip(names, values,
                                                                         strict=True)}

    async def advance(self, name: str, expected: str | None, tick_ms: float,
                      info: dict[str, Any], envelopes: Sequence[bytes], ready_key: str) -> bool:
        """Record ``tick_ms`` as handled and push ``envelopes``, if ``expected`` is still the
        last tick: exactly one consumer wins each tick."""
        return bool(await self._advance(
            keys=[self.keys.schedules, self.keys.schedules_info, ready_key],
            args=[name, expected or "", str(int(tick_ms)), orjson.dumps(info), *envelopes]))

    async def info(self) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(self.keys.schedules_info)
        return {text(k): orjson.loads(v) for k, v in raw.items()}
