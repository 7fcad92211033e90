"""What this consumer knows of revoked tasks: the queue's revoked ids (``_broker.revocations``,
shared in Redis), kept here as a dict so that checking a message costs one lookup.

Three ways a revoke arrives, whichever comes first:

- a ``revoke`` broadcast on Celery's remote-control channel (``celery -A app control revoke``,
  ``AsyncResult.revoke()``, ``event_bus.revoke``): acted on at once, and written to Redis (a
  Celery client only broadcasts, so a consumer started later would not know of it otherwise);
- a change of the shared set (``revoked_seq``), checked every ``REFRESH_S``: a broadcast this
  consumer missed (it was reconnecting) still reaches it;
- the set loaded at start: revokes from before a restart hold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio

from earnorm.events._broker.celery_presence import revoked_in
from earnorm.events._broker.errors import RETRYABLE_ERRORS
from earnorm.events._broker.revocations import REVOKE_EXPIRES_S, RevokedStore

log = logging.getLogger("earnorm.consumer")

REFRESH_S = 1.0


class Revocations:
    """``task_id in revocations``: revoked and not expired. ``on_terminate`` is told the ids
    whose running handlers are to be cancelled."""

    def __init__(self, store: RevokedStore, on_terminate: Callable[[set[str]], None]) -> None:
        self.store = store
        self.ids: dict[str, float] = {}  # id -> expiry, unix ms
        self._terminate: set[str] = set()
        self._on_terminate = on_terminate
        self._seq = -1

    def __contains__(self, task_id: object) -> bool:
        expires = self.ids.get(task_id) if isinstance(task_id, str) else None
        return expires is not None and expires > time.time() * 1000

    def live(self) -> list[str]:
        """The revoked ids in force (``celery inspect revoked``)."""
        now = time.time() * 1000
        return [task_id for task_id, expires in self.ids.items() if expires > now]

    async def refresh(self) -> None:
        """Reload the shared set if it changed since the last look."""
        seq = await self.store.seq()
        if seq == self._seq:
            return
        ids, terminate = await self.store.load()
        self._seq = seq
        self.ids = ids
        new = terminate - self._terminate
        self._terminate = terminate
        if new:
            self._on_terminate(new)

    def _apply(self, ids: list[str], terminate: bool) -> None:
        expires = time.time() * 1000 + REVOKE_EXPIRES_S * 1000
        for task_id in ids:
            self.ids[task_id] = expires
        if terminate:
            self._terminate.update(ids)
            self._on_terminate(set(ids))

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen for revoke broadcasts and follow the shared set, until cancelled. Started
        (``task_status``) once the set is loaded and the channel subscribed."""
        pubsub = await self.store.broadcasts()
        try:
            await self.refresh()
            task_status.started()
            while True:
                try:
                    await self._listen(pubsub)
                except RETRYABLE_ERRORS as exc:
                    log.debug("revoke listener: %r; following the shared set meanwhile", exc)
                    await anyio.sleep(REFRESH_S)
        finally:
            if pubsub is not None:
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()

    async def _listen(self, pubsub: Any) -> None:
        next_refresh = time.monotonic()
        while True:
            if pubsub is None:  # a Redis Cluster: the shared set alone
                await anyio.sleep(REFRESH_S)
                message = None
            else:
                message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=REFRESH_S)
            if message is not None and message.get("type") == "message":
                try:
                    revoke = revoked_in(message["data"])
                except (ValueError, TypeError, KeyError) as exc:
                    log.warning("remote-control message not understood: %r", exc)
                    revoke = None
                if revoke is not None and revoke[0]:
                    ids, terminate = revoke
                    self._apply(ids, terminate)
                    await self.store.add(ids, terminate=terminate)
            if time.monotonic() >= next_refresh:
                await self.refresh()
                next_refresh = time.monotonic() + REFRESH_S
