"""``Broker``: one queue's facade over its Lua scripts and commands. The consumer, the bus and
the tools reach Redis through it (and the stores it holds: ``failed_store``, ``server``,
``celery_unacked``, ``idle_wait``); key names come from ``keys``, the scripts from
``scripts``.

Ready -> in-flight is always a move inside Redis (a Lua script or BLMOVE), never a pop into
client memory, so a consumer killed at any instant loses nothing: its in-flight hash and landing
list are handed back by a live consumer once its heartbeat deadline passes. What a dead consumer
held is counted as one more delivery, atomically with the hand-back, and comes back through
``Q:recovered`` one message at a time (see ``scripts.RECOVER`` and ``scripts.FETCH``).

Scripts whose writes do not grow memory (fetch, ack, heartbeat, recover, promote) carry Redis 7's
``allow-oom`` flag, so a Redis at ``maxmemory`` keeps delivering and acking (which frees memory)
while it refuses the writes that would grow it (publish, retry, dead-letter): those raise one of
``REFUSED_ERRORS``, which callers treat as back-pressure.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from earnorm._config import EventConfig
from earnorm._errors import NotReplicated
from earnorm.events._broker import scripts
from earnorm.events._broker.celery_unacked import CeleryUnacked
from earnorm.events._broker.errors import ReplyLost
from earnorm.events._broker.failed_store import FailedStore
from earnorm.events._broker.idle_wait import BlockingWait
from earnorm.events._broker.key_leases import KeyLeases
from earnorm.events._broker.keys import (
    APP_QUEUES,
    HELD_MARK,
    UNACKED_INDEX,
    Keys,
    delayed_member,
    text,
)
from earnorm.events._broker.progress import ProgressStore
from earnorm.events._broker.publish_lane import PublishLane
from earnorm.events._broker.revocations import RevokedStore
from earnorm.events._broker.server import ServerProbe
from earnorm.events._broker.topology import is_cluster, same_slot
from earnorm.events._wire.failures import UNNAMED_PREFIX, too_large_record

# Bytes one fetch script moves at most (plus one message): a message costs the script ~6 ms a
# MB on this machine (docs/latency.md), so small batches and one large message at a time.
FETCH_CAP_BYTES = 1 << 20
# Messages one recovery slice hands back at most (~20 us each inside the script).
HAND_BACK_MOST = 500
# A message the fetch script weighs at more than this (an allocator's size) is never read by a
# script: it is moved into a key of its own and read with LINDEX (scripts.FETCH).
LARGE_BYTES = 256 * 1024
# The scratch list stats() weighs the oldest ready messages in (a consumer id cannot be this).
STATS_PROBE = "~stats"
# Messages the fetch script weighs at once, and the bytes its weighing may copy in one call
# (~0.6 ms a MB here): so a call copies at most about PROBE_WINDOW x max_message_bytes plus
# PROBE_CAP_BYTES natively, and reads at most LARGE_BYTES per pop into Lua.
PROBE_WINDOW = 2
PROBE_CAP_BYTES = 24 * 1024 * 1024


# A large retry's own key (Q:later:<token>) lives this long unless the settle that names it in
# the delayed set runs (it PERSISTs it): written first, it must not outlive a settle that was
# refused or found the message no longer ours.
LATER_ORPHAN_MS = 10 * 60 * 1000


def hold_max(max_bytes: int) -> int:
    """The largest weight (MEMORY USAGE of a one-message list) a message within ``max_bytes``
    can have: the allocator's size class is at most a quarter over, plus the list's own
    overhead. The fetch holds a message up to this and the consumer checks its exact length;
    over it, the message is surely too large.

    >>> hold_max(16 * 1024 * 1024) // 1024
    20544
    """
    return max_bytes + max_bytes // 4 + 64 * 1024

@dataclass(frozen=True, slots=True)
class Redelivery:
    """A message taken back from consumers that died holding it."""

    deliveries: int  # this delivery included
    died_holding: tuple[str, ...]
    alone: bool = False  # held at enough deaths that it runs with nothing else in flight


@dataclass(frozen=True, slots=True)
class Fetched:
    """One fetch: the messages moved into in-flight, and the recovered-message bookkeeping."""

    messages: list[bytes]
    redeliveries: dict[int, Redelivery]  # index in ``messages`` -> its redelivery
    recovered_waiting: int  # recovered messages left waiting (one to run alone, at the head)
    diverted: int  # messages over max_message_bytes moved to the failed store instead
    diverted_ids: list[str]  # the ids those named in their headers
    # Indexes in ``messages`` taken back meanwhile by a consumer that thought us dead (a large
    # message whose key was renamed away before we read it): not ours, not to be run.
    gone: frozenset[int] = frozenset()
    # Indexes of held messages found over max_message_bytes once read, set aside (counted in
    # ``diverted``): not to be run.
    aside: frozenset[int] = frozenset()
    # Every ready list was read to its end (nothing was left ready when the script ran).
    drained: bool = False


def _fetched(result: Any) -> tuple[Fetched, list[int]]:
    """The script's reply, and the indexes of the messages held in keys of their own."""
    if result == -1:
        raise ReplyLost("a fetch was sent again after its first run went through (the client "
                        "retried a failed read): what that run moved is handed back")
    messages, infos, alone, waiting, diverted, diverted_ids, held, drained = result
    redeliveries = {
        int(index) - 1: Redelivery(int(n), tuple(i for i in text(ids).split(",") if i),
                                   bool(alone))
        for index, n, ids in infos
    }
    return (Fetched(list(messages), redeliveries, int(waiting), int(diverted),
                    [text(i) for i in diverted_ids], drained=drained == 1),
            [int(index) - 1 for index, _size in held])




class Broker:
    """Thin async operations over one queue's keys. Stateless apart from the client."""

    def __init__(self, redis: Redis, config: EventConfig, *, script_flags: bool = True) -> None:
        self.redis = redis
        self.config = config
        self.keys = Keys.for_queue(config)
        self.failed = FailedStore(redis, self.keys)
        self.server = ServerProbe(redis, self.keys)
        self.celery = CeleryUnacked(redis, self.keys, config)
        self.revoked = RevokedStore(redis, self.keys)
        self.progress = ProgressStore(redis, self.keys)
        self._waiter = BlockingWait(redis)
        self.cluster = is_cluster(redis)
        # Consumer id -> its in-flight fields whose message is held in a key of its own: the
        # ack and settle scripts unlink that key with the field.
        self._held: dict[str, set[int]] = {}
        self.leases = KeyLeases(redis, self.keys, self._held,
                                keep_ms=int(config.heartbeat_timeout * 1000))
        # A cluster client routes each command to its slot's node: it keeps its own path.
        self._lane = None if self.cluster else PublishLane(redis)
        self.use_script_flags(script_flags)

    def use_script_flags(self, flags: bool) -> None:
        """Register the scripts with (Redis >= 7) or without their flags."""
        redis = self.redis
        self._fetch = redis.register_script(scripts.for_server(scripts.FETCH, flags))
        self._ack = redis.register_script(scripts.for_server(scripts.ACK, flags))
        self._settle = redis.register_script(scripts.for_server(scripts.SETTLE, flags))
        self._promote = redis.register_script(scripts.for_server(scripts.PROMOTE, flags))
        self._heartbeat = redis.register_script(scripts.for_server(scripts.HEARTBEAT, flags))
        self._recover = redis.register_script(scripts.for_server(scripts.RECOVER, flags))
        self._reclaim = redis.register_script(scripts.for_server(scripts.RECLAIM, flags))
        self._oldest = redis.register_script(scripts.for_server(scripts.OLDEST, flags))
        self._rate_slot = redis.register_script(scripts.RATE_SLOT)
        self._debounce = redis.register_script(scripts.DEBOUNCE)
        self.leases.use_script_flags(flags)

    async def prepare(self) -> None:
        """Read what the server supports (script flags need Redis 7)."""
        info = await self.server.info()
        self.use_script_flags(info.supports_script_flags)

    async def close(self) -> None:
        await self._waiter.close()
        if self._lane is not None:
            await self._lane.close()

    async def announce_app(self) -> None:
        """Record that an app called ``init()`` for this queue (``APP_QUEUES``)."""
        await self.redis.hset(APP_QUEUES, self.keys.queue, int(time.time() * 1000))

    async def app_queues(self) -> dict[str, float]:
        """Queue -> unix ms of the latest ``init()`` an app called for it."""
        raw = await self.redis.hgetall(APP_QUEUES)
        return {text(queue): float(ms) for queue, ms in raw.items()}

    async def queue_used(self) -> bool:
        """Whether any key of this queue exists (anything published, consumed or failed)."""
        return bool(await self.redis.exists(*self.keys.telltales))

    async def server_time_ms(self) -> float:
        """Redis's clock, in unix ms."""
        seconds, micros = await self.redis.time()
        return float(seconds * 1000 + micros / 1000)

    # ------------------------------------------------------------------ publishing

    async def push(self, raw: bytes, ready_index: int = 0) -> None:
        if self.config.min_replicas_ack:
            await self._replicated(lambda pipe: pipe.lpush(self.keys.ready[ready_index], raw))
            return
        await self._lpush(self.keys.ready[ready_index], raw)

    async def _lpush(self, key: str, *raws: bytes) -> None:
        """LPUSH on the publish lane when it is free, else (or after losing its connection)
        through the client's pool and its retry policy."""
        lane = self._lane
        if lane is not None and not lane.busy:
            try:
                await lane.execute("LPUSH", key, *raws)
                return
            except (RedisConnectionError, RedisTimeoutError):
                pass  # the lane dropped its connection; the pool's retry takes the push
        await self.redis.lpush(key, *raws)

    async def push_many(self, items: Sequence[tuple[bytes, int, float | None]]) -> None:
        """One round trip for a batch: (envelope, ready index, due ms or None) each. Atomic:
        one LPUSH for one list, else one transaction; with ``min_replicas_ack``, in order on
        one connection and then WAIT."""
        by_list: dict[int, list[bytes]] = {}
        delayed: dict[bytes, float] = {}
        later: list[tuple[str, bytes]] = []
        for raw, index, due_ms in items:
            if due_ms is None:
                by_list.setdefault(index, []).append(raw)
            else:
                delayed[self._delayed_member(raw, index, later)] = due_ms
        if len(by_list) == 1 and not delayed and not self.config.min_replicas_ack:
            [(index, raws)] = by_list.items()  # one LPUSH is atomic on its own: no MULTI
            await self._lpush(self.keys.ready[index], *raws)
            return

        def build(pipe: Any) -> None:
            for index, raws in by_list.items():
                pipe.lpush(self.keys.ready[index], *raws)
            for key, raw in later:
                pipe.rpush(key, raw)
            if delayed:
                pipe.zadd(self.keys.delayed, delayed)
        await self._write(build, transaction=True)

    def _delayed_member(self, raw: bytes, ready_index: int,
                        later: list[tuple[str, bytes]]) -> bytes:
        """The delayed-set member for ``raw``; a large message goes to a key of its own
        (appended to ``later``, to be written with the member) and the member names it, so
        the promote script never reads it (scripts.PROMOTE)."""
        if len(raw) <= LARGE_BYTES:
            return delayed_member(raw, ready_index)
        key = self.keys.later(uuid.uuid4().hex)
        later.append((key, raw))
        return delayed_member(HELD_MARK.encode() + key.encode(), ready_index)

    async def schedule(self, raw: bytes, ready_index: int, due_ms: float) -> None:
        later: list[tuple[str, bytes]] = []
        member = {self._delayed_member(raw, ready_index, later): due_ms}
        if self.config.min_replicas_ack or later:
            def build(pipe: Any) -> None:
                for key, body in later:
                    pipe.rpush(key, body)
                pipe.zadd(self.keys.delayed, member)
            await self._write(build, transaction=True)
            return
        await self.redis.zadd(self.keys.delayed, member)

    async def _write_later(self, later: list[tuple[str, bytes]]) -> None:
        """A large delayed message's own key, written before the script that names it (and
        PERSISTs it): expiring unless that script runs, it cannot outlive a failed one."""
        if later:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(*later[0])
                pipe.pexpire(later[0][0], LATER_ORPHAN_MS)
                await pipe.execute()

    async def debounce(self, raw: bytes, ready_index: int, quiet_ms: int, key: str) -> bool:
        """Schedule ``raw`` ``quiet_ms`` from now (Redis's clock) in place of the pending
        publish with the same debounce ``key``; True if it replaced one."""
        later: list[tuple[str, bytes]] = []
        member = self._delayed_member(raw, ready_index, later)
        await self._write_later(later)  # made to last by the script
        replaced = await self._debounce(
            keys=[self.keys.debounce(key), self.keys.delayed],
            args=[member, quiet_ms, HELD_MARK, later[0][0] if later else ""])
        return bool(replaced)

    async def outbox_relayed(self, count: int) -> None:
        await self.redis.hincrby(self.keys.outbox, "relayed", count)

    async def outbox_failed(self, error: str, at_ms: float) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.outbox, mapping={"last_error": error, "last_error_ms": at_ms})
            pipe.hincrby(self.keys.outbox, "errors", 1)
            await pipe.execute()

    async def outbox_counters(self) -> dict[str, str]:
        """What every outbox relay of this queue did: relayed, errors, last_error(_ms)."""
        raw = await self.redis.hgetall(self.keys.outbox)
        return {text(k): text(v) for k, v in raw.items()}

    async def ping(self) -> None:
        await self.redis.ping()

    async def ready_count(self) -> int:
        """Messages waiting in the ready lists (every priority)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in self.keys.ready:
                pipe.llen(key)
            return sum(await pipe.execute())

    async def next_due(self, limit: int) -> list[tuple[bytes, float]]:
        """The first ``limit`` delayed-set members, soonest first, with their due times (ms)."""
        members: list[tuple[bytes, float]] = await self.redis.zrange(  # type: ignore[assignment]
            self.keys.delayed, 0, limit - 1, withscores=True)
        return members

    async def push_once_many(
        self, items: Sequence[tuple[bytes, int, float | None, str, str]], ttl_ms: int
    ) -> list[str | None]:
        """(envelope, ready index, due ms or None, dedup key, job id) each, in one round trip:
        an item whose dedup key is set is not pushed. Returns, per item, the job id that
        holds its key (None: this call pushed it)."""
        k = self.keys

        def build(pipe: Any) -> None:
            for raw, index, due_ms, key, job_id in items:  # EVAL: a pipeline (or a cluster's)
                pipe.eval(scripts.PUSH_ONCE, 3, k.dedup(key), k.ready[index], k.delayed,
                          job_id, ttl_ms, raw, "" if due_ms is None else due_ms, index)
        replies = await self._write(build, transaction=False)
        return [None if r is None else text(r) for r in replies[:len(items)]]

    async def _write(self, build: Callable[[Any], Any], *, transaction: bool) -> list[Any]:
        """The commands ``build`` queues, in one pipeline (a MULTI with ``transaction``), or
        with ``min_replicas_ack`` in order on one connection followed by WAIT; the replies."""
        if self.config.min_replicas_ack:
            return await self._replicated(build)
        async with self.redis.pipeline(transaction=transaction) as pipe:
            build(pipe)
            return list(await pipe.execute())

    async def _replicated(self, build: Callable[[Any], Any]) -> list[Any]:
        """The writes ``build`` queues, then ``WAIT`` on the same connection (WAIT counts the
        replicas that have this connection's writes). ``NotReplicated`` if too few did."""
        want = self.config.min_replicas_ack
        timeout_ms = max(1, int(self.config.min_replicas_timeout * 1000))
        async with self.redis.pipeline(transaction=False) as pipe:
            build(pipe)
            if self.cluster:  # to the master of the queue's slot, where the writes went
                cluster: Any = self.redis
                await cluster.initialize()
                pipe.execute_command("WAIT", want, timeout_ms,
                                     target_nodes=cluster.get_node_from_key(self.keys.queue))
            else:
                pipe.execute_command("WAIT", want, timeout_ms)
            replies = await pipe.execute()
        acked = int(replies[-1])
        if acked < want:
            raise NotReplicated(
                f"published to the master, but {acked} of the {want} replica(s) that "
                f"min_replicas_ack asks for confirmed it within {timeout_ms} ms: a failover "
                "now could lose it", [], acked)
        return list(replies)

    # ------------------------------------------------------------------ consuming

    def _fetch_call(self, consumer_id: str, count: int, first_field: int, may_take_alone: bool,
                    max_bytes: int, alone_at: int, cap_bytes: int,
                    ) -> tuple[list[str], list[Any]]:
        k = self.keys
        keys = [
            k.inflight(consumer_id), k.landing(consumer_id), k.recovered,
            k.deliveries(consumer_id), k.failed, k.failed_index, k.aside, k.stats,
            k.probe(consumer_id), *k.ready,
        ]
        return keys, [count, first_field, 1 if may_take_alone else 0, max_bytes, alone_at,
                      max(cap_bytes, 1), k.held_prefix(consumer_id), HELD_MARK, LARGE_BYTES,
                      PROBE_WINDOW, PROBE_CAP_BYTES, hold_max(max_bytes)]

    async def _read_held(self, consumer_id: str, first_field: int, result: Any,
                         max_bytes: int) -> Fetched:
        """The fetch script's reply, with each large message read from its own key (one
        LINDEX each: Redis copies it once into the reply, no script reads it). One over
        ``max_bytes`` (its weight only estimated it) is set aside, unread by any script."""
        fetched, held = _fetched(result)
        if not held:
            return fetched
        fields = [first_field + i + 1 for i in held]
        mine = self._held.setdefault(consumer_id, set())
        mine.update(fields)
        async with self.redis.pipeline(transaction=False) as pipe:
            for field in fields:
                pipe.lindex(self.keys.held(consumer_id, field), 0)
            bodies = await pipe.execute()
        gone, aside, named = set(), set(), []
        for index, field, body in zip(held, fields, bodies, strict=True):
            if body is None:
                gone.add(index)
            elif len(body) > max_bytes:
                job_id, record = too_large_record(body, max_bytes, time.time() * 1000)
                if await self.failed.set_aside(
                        self.keys.inflight(consumer_id), self.keys.deliveries(consumer_id),
                        self.keys.held(consumer_id, field), field, job_id, record):
                    aside.add(index)
                    if not job_id.startswith(UNNAMED_PREFIX):  # a client may wait on it
                        named.append(job_id)
                else:
                    gone.add(index)
                mine.discard(field)
                fetched.messages[index] = b""
            else:
                fetched.messages[index] = body
        if gone or aside:
            fetched = replace(fetched, gone=frozenset(gone), aside=frozenset(aside),
                              diverted=fetched.diverted + len(aside),
                              diverted_ids=fetched.diverted_ids + named)
        return fetched

    async def fetch(
        self, consumer_id: str, count: int, first_field: int, *, may_take_alone: bool,
        max_bytes: int, alone_at: int, cap_bytes: int = FETCH_CAP_BYTES,
    ) -> Fetched:
        """Move up to ``count`` messages, and about ``cap_bytes`` (one more message at most;
        at least one), into the consumer's in-flight hash, atomically.

        The i-th message returned is stored under field ``first_field + i + 1``. Messages over
        ``max_bytes`` never leave Redis: they go to the failed store (``too_large``).
        """
        keys, args = self._fetch_call(consumer_id, count, first_field, may_take_alone,
                                      max_bytes, alone_at, cap_bytes)
        return await self._read_held(consumer_id, first_field,
                                     await self._fetch(keys=keys, args=args), max_bytes)

    async def wait_and_fetch(
        self, consumer_id: str, timeout: float, count: int, first_field: int, *,
        may_take_alone: bool, max_bytes: int, alone_at: int,
        cap_bytes: int = FETCH_CAP_BYTES,
    ) -> Fetched:
        """Block until a message is on the main ready list and move it to our landing list
        (``BLMOVE``: the message is never only in this process's memory, and its bytes are
        not kept), then fetch as ``fetch`` does. The fetch is sent right behind the BLMOVE on
        the same connection, so Redis runs it the moment the BLMOVE returns: one round trip
        from an idle wait to the messages, as if the two had been sent one after the other."""
        keys, args = self._fetch_call(consumer_id, count, first_field, may_take_alone,
                                      max_bytes, alone_at, cap_bytes)
        try:
            result = await self._waiter.move_then(
                self.keys.ready[0], self.keys.landing(consumer_id), timeout,
                ("EVALSHA", self._fetch.sha, len(keys), *keys, *args))
        except NoScriptError:  # a restarted Redis forgot it: the BLMOVE ran, fetch again
            return await self.fetch(consumer_id, count, first_field,
                                    may_take_alone=may_take_alone, max_bytes=max_bytes,
                                    alone_at=alone_at, cap_bytes=cap_bytes)
        return await self._read_held(consumer_id, first_field, result, max_bytes)

    async def ack(self, consumer_id: str, fields: Sequence[int]) -> int:
        """Remove handled fields from in-flight and count them as processed, atomically.
        Returns how many were still ours."""
        k = self.keys
        keys = [k.inflight(consumer_id), k.stats, k.deliveries(consumer_id)]
        mine = self._held.get(consumer_id, set())
        held = [f for f in fields if f in mine] if mine else []
        args: list[str | int] = ["", 0, *fields]
        if held:
            plain = [f for f in fields if f not in mine]
            args = [k.held_prefix(consumer_id), len(held), *held, *plain]
        removed = int(await self._ack(keys=keys, args=args))
        mine.difference_update(held)
        return removed

    async def settle(
        self, consumer_id: str | None, field: int | None, *,
        retry: tuple[bytes, int, float] | None = None,
        dead: tuple[str, bytes, float] | None = None,
        count_retry: bool = True,
        pushes: Sequence[tuple[str, bytes]] = (),
        count: str = "",
    ) -> bool:
        """Ack ``field`` and, in the same script, schedule ``retry`` (envelope, ready index, due
        ms) in the delayed set and/or store ``dead`` (job id, record, failed ms) in the failed
        store, and LPUSH each of ``pushes`` (list key, envelope); the counters follow (and
        ``count``, a counter to add one to: "processed", "unhandled"). A held field that is
        dead-lettered is kept aside (``holds``), its record built without the envelope. False if
        the field was no longer ours (another consumer recovered it): then nothing is
        written."""
        k = self.keys
        cid = consumer_id or ""
        member: bytes = b""
        due = 0.0
        later: list[tuple[str, bytes]] = []
        if retry is not None:
            raw, ready_index, due = retry
            member = self._delayed_member(raw, ready_index, later)
            await self._write_later(later)  # made to last by the settle below
        job_id, record, failed_ms = dead if dead is not None else ("", b"", 0.0)
        if pushes and self.cluster:
            pushes = await self._push_elsewhere(pushes)
        keys = [k.inflight(cid), k.deliveries(cid), k.delayed, k.failed, k.failed_index, k.stats,
                k.aside, *(key for key, _ in pushes)]
        held = field is not None and self.holds(cid, field)
        args: list[Any] = [
            "" if field is None or consumer_id is None else field, member, due,
            1 if count_retry else 0, job_id, record, failed_ms, count,
            k.held(cid, field) if held and field is not None else "",
            later[0][0] if later else "",
            k.aside_of(job_id) if held and dead is not None else "",
            *(raw for _, raw in pushes),
        ]
        ours = bool(await self._settle(keys=keys, args=args))
        if later and not ours:
            await self.redis.unlink(later[0][0])
        if held and field is not None:
            self._held.get(cid, set()).discard(field)
        return ours

    def holds(self, consumer_id: str, field: int) -> bool:
        """Whether ``field`` is a large message held in a key of its own: dead-lettered, it is
        kept aside by renaming that key, so its record is written without the envelope
        (``failure_record(envelope_aside=True)``)."""
        return field in self._held.get(consumer_id, ())

    async def _push_elsewhere(self, pushes: Sequence[tuple[str, bytes]]
                              ) -> Sequence[tuple[str, bytes]]:
        """On a cluster, a follow-up for another queue lives in another slot, out of the settle
        script's reach: it is pushed first, so a crash before the settle repeats it (at least
        once) and never loses it. Returns the pushes the script can still do."""
        here = [(key, raw) for key, raw in pushes if same_slot(key, self.keys.queue)]
        for key, raw in pushes:
            if not same_slot(key, self.keys.queue):
                await self.redis.lpush(key, raw)
        return here

    async def defer(
        self, consumer_id: str, field: int, raw: bytes, ready_index: int, due_ms: float
    ) -> bool:
        """Ack ``field`` and schedule ``raw`` unchanged in the delayed set (a future eta)."""
        return await self.settle(consumer_id, field, retry=(raw, ready_index, due_ms),
                                 count_retry=False)

    async def rate_slot(self, event_name: str, interval_us: int,
                        count: int = 1) -> tuple[int, int]:
        """Reserve the next ``count`` slots of ``event_name``'s rate limit: (the first slot,
        now), microseconds of Redis's clock; the others follow an interval apart."""
        slot, now = await self._rate_slot(keys=[self.keys.rates],
                                          args=[event_name, interval_us, count])
        return int(slot), int(now)

    async def dead_letter(
        self, consumer_id: str | None, field: int | None, job_id: str, record: bytes,
        failed_ms: float,
    ) -> None:
        """Store the failed-job record and ack the message, in one script."""
        await self.settle(consumer_id, field, dead=(job_id, record, failed_ms))

    async def promote_due(self, limit: int = 500) -> tuple[int, float | None, float]:
        """Move due delayed messages to the ready lists. Returns (moved, next due ms, now ms)."""
        keys = [self.keys.delayed, self.keys.recovered, *self.keys.ready]
        sent = time.monotonic()
        moved, next_due, now = await self._promote(keys=keys,
                                                   args=[limit, FETCH_CAP_BYTES, HELD_MARK])
        nxt = float(next_due)
        # Redis's time as the reply arrives: read mid-way, on average, through the round trip.
        now_ms = float(now) + (time.monotonic() - sent) * 500
        return int(moved), (None if nxt < 0 else nxt), now_ms

    async def heartbeat(self, consumer_id: str, timeout_ms: int) -> tuple[float, list[str]]:
        """Extend our deadline. Returns (Redis now ms, ids of consumers past their deadline)."""
        result = await self._heartbeat(
            keys=[self.keys.consumers, self.keys.stats], args=[consumer_id, timeout_ms]
        )
        return float(result[0]), [text(x) for x in result[1:]]

    async def recover(self, consumer_id: str, *, force: bool = False) -> int:
        """Hand a dead consumer's messages back; -1 if it is alive again. In slices of about
        ``FETCH_CAP_BYTES`` each (one script each), so no slice blocks Redis for long."""
        k = self.keys
        keys = [
            k.consumers, k.inflight(consumer_id), k.landing(consumer_id), k.ready[0],
            k.monitor, k.recovered, k.deliveries(consumer_id), k.probe(consumer_id),
        ]
        args = [consumer_id, "1" if force else "0", FETCH_CAP_BYTES, HAND_BACK_MOST,
                k.held_prefix(consumer_id), k.parked_prefix(consumer_id), HELD_MARK,
                LARGE_BYTES]
        total = 0
        while True:
            result = await self._recover(keys=keys, args=args)
            if not isinstance(result, list):
                return -1 if total == 0 else total  # alive again between two slices
            moved, more = (int(x) for x in result)
            total += moved
            if not more:
                self._held.pop(consumer_id, None)
                return total

    async def reclaim(self, consumer_id: str, known: Collection[int]) -> int:
        """Hand back fields of our own in-flight hash that we do not know about (in slices,
        as ``recover`` does)."""
        k = self.keys
        fields = [int(f) for f in await self.redis.hkeys(k.inflight(consumer_id))]
        orphans = [f for f in fields if f not in known]
        keys = [k.inflight(consumer_id), k.ready[0], k.recovered, k.deliveries(consumer_id)]
        moved = 0
        while orphans:
            seen, handed = (int(x) for x in await self._reclaim(
                keys=keys, args=[FETCH_CAP_BYTES, HAND_BACK_MOST, k.held_prefix(consumer_id),
                                 k.parked_prefix(consumer_id), HELD_MARK, *orphans]))
            moved += handed
            orphans = orphans[max(seen, 1):]
        return moved

    async def unregister(self, consumer_id: str) -> None:
        await self.redis.zrem(self.keys.consumers, consumer_id)

    async def publish_summary(self, consumer_id: str, summary: bytes) -> None:
        await self.redis.hset(self.keys.monitor, consumer_id, summary)

    # ------------------------------------------------------------------ counts

    async def snapshot(self) -> dict[str, Any]:
        """Everything ``stats()`` needs about the queue: one pipeline, the oldest messages'
        headers, and the in-flight counts of the consumers it found (no message body
        travels: the oldest messages' headers are cut out in Redis)."""
        k = self.keys
        now_ms = await self.server_time_ms() if self.cluster else None  # TIME has no slot
        async with self.redis.pipeline(transaction=False) as pipe:
            if now_ms is None:
                pipe.time()
            for key in k.ready:
                pipe.llen(key)
            pipe.zcard(k.delayed)
            pipe.zrange(k.delayed, 0, 0, withscores=True)
            pipe.hlen(k.failed)
            pipe.zrange(k.consumers, 0, -1, withscores=True)
            pipe.hgetall(k.stats)
            pipe.hgetall(k.monitor)
            pipe.hgetall(k.server)
            pipe.llen(k.recovered)
            pipe.zcard(k.revoked)
            pipe.zcard(UNACKED_INDEX)
            pipe.exists(*k.telltales)
            pipe.hgetall(k.rates)
            results = await pipe.execute()
        oldest = await self._oldest(keys=[k.probe(STATS_PROBE), *k.ready], args=[LARGE_BYTES])
        n = len(k.ready)
        if now_ms is None:
            seconds, micros = results.pop(0)
            now_ms = seconds * 1000 + micros / 1000
        ready = results[:n]
        (delayed, next_delayed, failed, consumers, counters, monitor, server, recovered,
         revoked, celery_unacked, seen, rates) = results[n:]
        inflight = 0
        if consumers:
            async with self.redis.pipeline(transaction=False) as pipe:
                for cid, _ in consumers:
                    pipe.hlen(k.inflight(text(cid)))
                    pipe.llen(k.landing(text(cid)))
                inflight = sum(await pipe.execute())
        return {
            "now_ms": now_ms,
            "ready": {step: int(c) for step, c in zip(k.steps, ready, strict=True)},
            "oldest_ready": [(text(eta), text(stamp)) for present, eta, stamp in oldest
                             if int(present)],
            "delayed": int(delayed),
            "next_delayed_ms": float(next_delayed[0][1]) if next_delayed else None,
            "failed": int(failed),
            "inflight": int(inflight),
            "recovered": int(recovered),
            "revoked": int(revoked),
            "celery_unacked": int(celery_unacked),
            "rate_slots_us": {text(name): int(slot) for name, slot in rates.items()},
            "key_waiting": await self.leases.waiting(),
            "consumers": {text(cid): float(deadline) for cid, deadline in consumers},
            "counters": {text(key): int(float(v)) for key, v in counters.items()},
            "monitor": {text(key): v for key, v in monitor.items()},
            "server": {text(key): text(v) for key, v in server.items()},
            "seen": bool(seen),
        }
