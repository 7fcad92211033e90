"""The transactional outbox: events published inside ``earnorm.transaction()`` are written to a
MongoDB collection in the same transaction, and a relay moves the committed ones to Redis.

Collection ``earnorm_outbox``, one document per event::

    {_id: ObjectId (creation order), event_id, queue, raw: <the Celery envelope>, index: <ready
     list>, due_ms: <unix ms or None>, dedup_key, created_ms, state: "pending" | "sent",
     claim, claim_until, sent_ms}

The relay (one per ``init()``ed process with MongoDB, and in a consumer given ``--mongo-uri``):

1. finds up to ``batch`` pending entries whose claim expired, oldest first;
2. claims them with one ``update_many`` whose filter repeats "pending and claim expired": MongoDB
   updates each document atomically, so of several relays racing, each entry goes to one;
3. pushes its entries to Redis through a script that first sets a dedup key
   (``Q:dedup:outbox:<event id>``, or the entry's own ``dedup_key``) and does nothing if it
   exists: a relay killed between the push and step 4 leaves an entry that another relay claims
   after ``claim_timeout`` (10 s) and pushes again, and Redis drops that second push;
4. deletes them (``outbox_retention`` > 0: marks them sent, and deletes them after that long).

A crash anywhere loses nothing (an unsent entry is pending until a relay marks it sent); the
worst case is a duplicate with the same event id, and only if the dedup key is gone too (Redis
lost its data, or the entry stayed claimed longer than the dedup TTL).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from earnorm.events._staging import Staged

if TYPE_CHECKING:
    from collections.abc import Callable

    from pymongo.asynchronous.client_session import AsyncClientSession
    from pymongo.asynchronous.collection import AsyncCollection
    from pymongo.asynchronous.database import AsyncDatabase

    from earnorm.events._broker.broker import Broker
    from earnorm.events._bus import EventBus

log = logging.getLogger("earnorm.outbox")

COLLECTION = "earnorm_outbox"
_relays: set[OutboxRelay] = set()  # running in this process: woken after each commit


def _wake_local_relays() -> None:
    for relay in _relays:
        relay.nudge()


async def stage(database: AsyncDatabase[dict[str, Any]], session: AsyncClientSession,
                on_commit: list[Callable[[], None]], queue: str, items: list[Staged]) -> None:
    """Write the staged messages to the outbox collection in ``session``'s transaction, and
    wake this process's relays when it commits."""
    from bson import Binary

    now_ms = time.time() * 1000
    documents = [{
        "event_id": event_id, "queue": queue, "raw": Binary(raw), "index": ready_index,
        "due_ms": due_ms, "dedup_key": dedup_key, "created_ms": now_ms, "state": "pending",
        "claim": None, "claim_until": 0.0,
    } for event_id, raw, ready_index, due_ms, dedup_key in items]
    await database[COLLECTION].insert_many(documents, session=session)
    if _wake_local_relays not in on_commit:
        on_commit.append(_wake_local_relays)


class OutboxRelay:
    """Moves committed outbox entries to Redis. ``start()`` runs it as a task; ``stop()``."""

    def __init__(self, bus: EventBus, database: AsyncDatabase[dict[str, Any]], *,
                 batch: int = 500) -> None:
        self.bus = bus
        self.database = database
        config = bus.config
        self.poll_interval = config.outbox_poll_interval
        self.claim_timeout_ms = config.outbox_claim_timeout * 1000
        self.retention_ms = config.outbox_retention * 1000
        self.dedup_ttl_ms = int(config.outbox_dedup_ttl * 1000)
        self.batch = batch
        self.relayed = 0
        self.errors = 0
        self.last_error: str | None = None
        self._brokers: dict[str, Broker] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._last_cleanup = 0.0
        # Every relay's totals, for stats() and the CLI of any process: Q:outbox.

    @property
    def collection(self) -> AsyncCollection[dict[str, Any]]:
        return self.database[COLLECTION]

    def nudge(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            _relays.add(self)
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop the loop, then relay what is pending (for up to ``drain_timeout`` s), so a
        process that commits and closes at once does not leave its events to another one."""
        _relays.discard(self)
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        from pymongo.errors import PyMongoError

        from earnorm.events._broker.errors import RETRYABLE_ERRORS

        with contextlib.suppress(PyMongoError, *RETRYABLE_ERRORS, TimeoutError):
            async with asyncio.timeout(drain_timeout):
                while await self.relay_once():
                    pass

    async def run(self) -> None:
        from pymongo.errors import PyMongoError

        from earnorm.events._broker.errors import RETRYABLE_ERRORS

        errors: tuple[type[BaseException], ...] = (PyMongoError, *RETRYABLE_ERRORS)
        with contextlib.suppress(PyMongoError):
            await self.collection.create_index([("state", 1), ("claim_until", 1)])
        while True:
            try:
                moved = await self.relay_once()
                if self._failing:
                    log.warning("outbox relay is back")
                    self._failing = False
            except errors as exc:
                moved = 0
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                with contextlib.suppress(*errors):  # Redis may be what fails
                    await self.bus.broker.outbox_failed(self.last_error, time.time() * 1000)
                if not self._failing:
                    log.warning("outbox relay failed (%s); retrying every %.1fs",
                                self.last_error, self.poll_interval)
                    self._failing = True
            if moved >= self.batch:
                continue  # more are waiting
            self._wake.clear()
            await self._sleep()

    async def _sleep(self) -> None:
        """Until nudged, or the poll interval. Not ``asyncio.wait_for``: on Python 3.11 it
        loses a cancellation that arrives as the wait ends, and ``stop()`` then waits
        forever for a relay that carries on (seen in CI, a test hung in ``close()``)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.poll_interval):
                await self._wake.wait()

    async def relay_once(self) -> int:
        """Claim, push and mark one batch; how many entries this relay published."""
        now = time.time() * 1000
        await self._cleanup(now)
        expired = {"state": "pending", "claim_until": {"$lt": now}}
        candidates = [d["_id"] async for d in self.collection.find(
            expired, {"_id": 1}, sort=[("_id", 1)], limit=self.batch)]
        if not candidates:
            return 0
        token = uuid.uuid4().hex
        await self.collection.update_many(
            {"_id": {"$in": candidates}, **expired},
            {"$set": {"claim": token, "claim_until": now + self.claim_timeout_ms}})
        mine = [d async for d in self.collection.find(
            {"claim": token, "state": "pending"}, sort=[("_id", 1)])]
        if not mine:
            return 0  # another relay took them
        by_queue: dict[str, list[dict[str, Any]]] = {}
        for entry in mine:
            by_queue.setdefault(entry["queue"], []).append(entry)
        try:
            for queue, entries in by_queue.items():
                await self._broker(queue).push_once_many([
                    (bytes(e["raw"]), int(e["index"]), e.get("due_ms"),
                     e.get("dedup_key") or f"outbox:{e['event_id']}", e["event_id"])
                    for e in entries], self.dedup_ttl_ms)
        except BaseException:
            # Redis failed mid-batch: let the next try (ours or another relay's) claim these
            # at once instead of after claim_timeout; what was pushed is deduplicated.
            with contextlib.suppress(Exception):
                await self.collection.update_many({"claim": token, "state": "pending"},
                                                  {"$set": {"claim_until": 0.0}})
            raise
        # Counted as ours: the entries still under our claim when marked. A server whose
        # update_many is not atomic per document (jongodb) can let two relays both read a batch
        # as theirs; the push was deduplicated, and only the claim's holder marks (and counts).
        sent = await self._mark_sent([e["_id"] for e in mine], token)
        self.relayed += sent
        await self.bus.broker.outbox_relayed(sent)
        return sent

    async def _mark_sent(self, ids: list[Any], token: str) -> int:
        """Mark our claimed entries sent (or delete them); how many were still ours."""
        if not self.retention_ms:
            deleted = await self.collection.delete_many({"_id": {"$in": ids}, "claim": token})
            return int(deleted.deleted_count)
        updated = await self.collection.update_many(
            {"_id": {"$in": ids}, "claim": token},
            {"$set": {"state": "sent", "sent_ms": time.time() * 1000}})
        return int(updated.modified_count)

    def _broker(self, queue: str) -> Broker:
        broker = self._brokers.get(queue)
        if broker is None:
            from earnorm.events._broker.broker import Broker

            bus = self.bus
            broker = bus.broker if queue == bus.config.queue_name else Broker(
                bus.redis, dataclasses.replace(bus.config, queue_name=queue))
            self._brokers[queue] = broker
        return broker

    async def _cleanup(self, now: float) -> None:
        if not self.retention_ms or now - self._last_cleanup < 60_000:
            return
        self._last_cleanup = now
        await self.collection.delete_many({"state": "sent",
                                           "sent_ms": {"$lt": now - self.retention_ms}})

    async def stats(self) -> dict[str, Any]:
        """Pending entries and the age of the oldest (the relays' lag), from MongoDB; what
        every relay of this queue did (relayed, errors, the last error), from Redis."""
        pending = await self.collection.count_documents({"state": "pending"})
        oldest = await self.collection.find_one({"state": "pending"}, sort=[("_id", 1)])
        lag = None if oldest is None else round(
            max(time.time() * 1000 - float(oldest["created_ms"]), 0.0) / 1000, 3)
        totals = await self.bus.broker.outbox_counters()
        return {"pending": pending, "oldest_pending_s": lag,
                "relayed": int(totals.get("relayed", 0)), "errors": int(totals.get("errors", 0)),
                "last_error": totals.get("last_error")}
