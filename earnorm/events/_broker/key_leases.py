"""Per-key concurrency in Redis: leases of the handlers running for one key, the messages
waiting for a slot, and the sweep that frees a dead consumer's slots (``scripts.KEY_ACQUIRE``,
``scripts.KEY_RELEASE``; key layout in ``keys``)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

from redis.asyncio import Redis

from earnorm.events._broker import scripts
from earnorm.events._broker.keys import HELD_MARK, Keys, text
from earnorm.events._broker.topology import is_cluster


class Acquired(Enum):
    RUN = 1  # a slot is ours: run, then release it
    WAITS = 0  # moved out of in-flight into the key's wait list, in the same script
    GONE = -1  # the field is no longer ours (another consumer recovered it)


def limited(most: int, key: str) -> str:
    """How a limited key is named in Redis (``<max>:<key>``): two limits of different sizes
    on one key are two limits."""
    return f"{most}:{key}"


class KeyLeases:
    def __init__(self, redis: Redis, keys: Keys, held: dict[str, set[int]],
                 keep_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self._held = held  # the broker's: a held message that waits leaves it
        self.keep_ms = keep_ms  # how long a released waiter's slot is kept for it
        self.cluster = is_cluster(redis)
        self.use_script_flags(True)

    def use_script_flags(self, flags: bool) -> None:
        self._acquire = self.redis.register_script(scripts.for_server(scripts.KEY_ACQUIRE, flags))
        self._release = self.redis.register_script(scripts.for_server(scripts.KEY_RELEASE, flags))

    @staticmethod
    def member(consumer_id: str, field: int) -> str:
        return f"c:{consumer_id}:{field}"

    async def acquire_many(self, consumer_id: str,
                           asks: Sequence[tuple[int, int, str, str]]) -> list[Acquired]:
        """For each (field, max, key, job id): take a slot of ``key`` for the message in
        ``field``, or make it wait for one. One round trip (a pipeline of scripts)."""
        k = self.keys
        mine = self._held.get(consumer_id, set())
        calls = []
        for field, most, key, job_id in asks:
            name = limited(most, key)
            held = field in mine
            calls.append((
                [k.lease(name), k.key_wait(name), k.key_waiting, k.consumers,
                 k.inflight(consumer_id), k.deliveries(consumer_id)],
                [self.member(consumer_id, field), most, field, job_id, "",
                 k.held(consumer_id, field) if held else "",
                 f"{k.parked_prefix(consumer_id)}w{field}", HELD_MARK, name]))
        got = [Acquired(int(r)) for r in await self._run_many(self._acquire, calls)]
        for (field, *_), result in zip(asks, got, strict=True):
            if result is not Acquired.RUN:
                mine.discard(field)
        return got

    async def release_many(self, consumer_id: str | None,
                           gives: Sequence[tuple[int | None, str, int]]) -> list[int]:
        """For each (field or None, ``<max>:<key>``, max): free that slot (None: only sweep)
        and hand free slots to waiters; how many waiters each released. One round trip."""
        k = self.keys
        calls = []
        for field, name, most in gives:
            member = "" if consumer_id is None or field is None else self.member(consumer_id,
                                                                                   field)
            calls.append(([k.lease(name), k.key_wait(name), k.key_waiting, k.consumers,
                           k.recovered, k.ready[0]], [member, most, self.keep_ms, name,
                                                      HELD_MARK]))
        return [int(r) for r in await self._run_many(self._release, calls)]

    async def _run_many(self, script: Any, calls: list[tuple[list[str], list[Any]]]
                        ) -> list[Any]:
        if len(calls) == 1 or self.cluster:  # a cluster pipeline would split them by node
            return [await script(keys=keys, args=args) for keys, args in calls]
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            return list(await pipe.execute())

    async def sweep(self, older_ms: float, count: int = 50) -> int:
        """Release what is free for the keys whose waiters waited since before ``older_ms``
        (a slot a killed consumer held, or a release lost with its consumer). Bounded: at most
        ``count`` keys per call, in one round trip."""
        names: Any = await self.redis.zrangebyscore(self.keys.key_waiting, "-inf", older_ms,
                                                    start=0, num=count)
        gives: list[tuple[int | None, str, int]] = []
        for raw in names:
            name = text(raw)
            most, _, _ = name.partition(":")
            if most.isdigit():
                gives.append((None, name, int(most)))
        return sum(await self.release_many(None, gives)) if gives else 0

    async def waiting(self, count: int = 20) -> dict[str, int]:
        """The keys with waiters (``<max>:<key>``, latest first, at most ``count``) and how
        many wait on each."""
        names: Any = await self.redis.zrevrange(self.keys.key_waiting, 0, count - 1)
        if not names:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for raw in names:
                pipe.llen(self.keys.key_wait(text(raw)))
            counts = await pipe.execute()
        return {text(n): int(c) for n, c in zip(names, counts, strict=True) if int(c)}
