"""``async with earnorm.transaction():``: MongoDB writes, their hooks and their events, all or
nothing.

Inside the block every ORM read and write uses the transaction's session, and every event
published (``event_bus.publish``, ``dispatch_model_event``, ``before_save``/``after_save``) is
written to the outbox collection in the same transaction instead of Redis. Leaving the block
normally commits; an exception (a hook's included) aborts: no document, no event, no outbox
entry. After a commit the outbox relay moves the entries to Redis (``events/_outbox.py``).

A transaction inside a transaction joins the outer one. MongoDB transactions need a replica set
or a sharded cluster (a single-node replica set will do).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from earnorm._environment import current_environment
from earnorm._errors import DatabaseError, NotInitializedError

if TYPE_CHECKING:
    from pymongo.asynchronous.client_session import AsyncClientSession
    from pymongo.asynchronous.database import AsyncDatabase


@dataclass
class Transaction:
    session: AsyncClientSession
    database: AsyncDatabase[dict[str, Any]]
    # Run after the commit (the relay's wake-up); never after an abort.
    on_commit: list[Callable[[], None]] = field(default_factory=list)


_current: ContextVar[Transaction | None] = ContextVar("earnorm_transaction", default=None)


def current_transaction() -> Transaction | None:
    return _current.get()


def session_options() -> dict[str, Any]:
    """``{"session": ...}`` inside a transaction, else ``{}``: for every PyMongo call."""
    tx = _current.get()
    return {} if tx is None else {"session": tx.session}


@asynccontextmanager
async def transaction() -> AsyncIterator[Transaction]:
    """All ORM writes in the block, their hooks, and the events they publish commit together
    or not at all::

        async with earnorm.transaction():
            user = User(email="a@example.com")
            await user.create()          # its @after_create hook runs inside, too
            await dispatch_model_event(earnorm.event_bus, User, "created", user.id, user)
        # committed: the relay publishes user.created to Redis
    """
    outer = _current.get()
    if outer is not None:
        yield outer
        return
    try:
        environment = current_environment()
        client = environment.client
        database = environment.database
    except NotInitializedError as exc:
        raise NotInitializedError(
            "earnorm.transaction() needs MongoDB: call 'await earnorm.init(mongo_uri=..., "
            "database=..., redis_uri=...)' first") from exc
    if client is None:
        raise NotInitializedError("earnorm.transaction() needs MongoDB (init(mongo_uri=...))")
    from pymongo.errors import PyMongoError

    try:
        async with client.start_session() as session, await session.start_transaction():
            tx = Transaction(session, database)
            token = _current.set(tx)
            try:
                yield tx
            finally:
                _current.reset(token)
    except PyMongoError as exc:
        raise DatabaseError(f"transaction failed: {type(exc).__name__}: {exc}") from exc
    for callback in tx.on_commit:
        callback()
