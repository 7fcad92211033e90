"""``async with earnorm.transaction():``: MongoDB writes, their hooks and their events, all or
nothing.

Inside the block every ORM read and write uses the transaction's session, and every event
published (``event_bus.publish``, ``dispatch_model_event``, ``before_save``/``after_save``) is
written to the outbox collection in the same transaction instead of Redis. Leaving the block
normally commits; an exception (a hook's included) aborts: no document, no event, no outbox
entry. After a commit the outbox relay moves the entries to Redis (``earnorm/_outbox.py``).

A transaction inside a transaction joins the outer one. MongoDB transactions need a replica set
or a sharded cluster (a single-node replica set will do).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from earnorm import _outbox as outbox
from earnorm._environment import current_environment
from earnorm._errors import DatabaseError, NotInitializedError
from earnorm.events._staging import Staged, staging

if TYPE_CHECKING:
    from pymongo.asynchronous.client_session import AsyncClientSession
    from pymongo.asynchronous.database import AsyncDatabase
    from pymongo.asynchronous.mongo_client import AsyncMongoClient

T = TypeVar("T")


@dataclass
class Transaction:
    session: AsyncClientSession
    database: AsyncDatabase[dict[str, Any]]
    # Run after the commit (the relay's wake-up); never after an abort.
    on_commit: list[Callable[[], None]] = field(default_factory=list)

    async def stage(self, queue: str, items: list[Staged]) -> None:
        """Events published in the transaction: into the outbox, in it (``events._staging``)."""
        await outbox.stage(self.database, self.session, self.on_commit, queue, items)


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
    client, database = _mongo("transaction()")
    from pymongo.errors import PyMongoError

    try:
        async with client.start_session() as session, await session.start_transaction():
            tx = Transaction(session, database)
            token = _current.set(tx)
            try:
                with staging(tx):
                    yield tx
            finally:
                _current.reset(token)
    except PyMongoError as exc:
        raise DatabaseError(f"transaction failed: {type(exc).__name__}: {exc}") from exc
    for callback in tx.on_commit:
        callback()


async def run_in_transaction(
    block: Callable[[], Awaitable[T]], *, max_commit_time_ms: int | None = None
) -> T:
    """``await block()`` in a transaction, as ``transaction()`` does, and run it whole again
    when MongoDB says a retry may succeed: a ``TransientTransactionError`` (a write conflict with
    another transaction, a primary stepping down) re-runs ``block``, an
    ``UnknownTransactionCommitResult`` re-sends the commit. It is PyMongo's
    ``with_transaction``, which keeps trying for up to 120 s; what it raises last is a
    ``DatabaseError``. Returns what ``block`` returned in the try that committed::

        async def place_order() -> str:
            order = Order(user_id=user.id, total=42)
            await order.create()         # and its events, into the outbox
            await user.write({"orders": user.orders + 1})
            return order.id

        order_id = await earnorm.run_in_transaction(place_order)

    Each try's ORM writes and published events are rolled back with it (the events wait in
    the outbox until the commit), so they are safe to repeat; anything else ``block`` does
    (a call to another service) happens once per try. Inside a transaction it joins it and
    runs once.
    """
    outer = _current.get()
    if outer is not None:
        return await block()
    client, database = _mongo("run_in_transaction()")
    from pymongo.errors import PyMongoError

    last: Transaction | None = None  # the try's; after with_transaction, the committed one

    async def attempt(session: AsyncClientSession) -> T:
        nonlocal last
        tx = last = Transaction(session, database)
        token = _current.set(tx)
        try:
            with staging(tx):
                result = await block()
        except DatabaseError as exc:
            if isinstance(exc.__cause__, PyMongoError):
                # The ORM's wrapper hides the error labels PyMongo decides the retry by.
                raise exc.__cause__ from exc
            raise
        finally:
            _current.reset(token)
        return result

    try:
        async with client.start_session() as session:
            result = await session.with_transaction(
                attempt, max_commit_time_ms=max_commit_time_ms)
    except PyMongoError as exc:
        raise DatabaseError(f"transaction failed: {type(exc).__name__}: {exc}") from exc
    assert last is not None  # with_transaction ran ``attempt`` at least once
    for callback in last.on_commit:
        callback()
    return result


def _mongo(what: str) -> tuple[AsyncMongoClient[dict[str, Any]], AsyncDatabase[dict[str, Any]]]:
    try:
        environment = current_environment()
        client = environment.client
        database = environment.database
    except NotInitializedError as exc:
        raise NotInitializedError(
            f"earnorm.{what} needs MongoDB: call 'await earnorm.init(mongo_uri=..., "
            "database=..., redis_uri=...)' first") from exc
    if client is None:
        raise NotInitializedError(f"earnorm.{what} needs MongoDB (init(mongo_uri=...))")
    return client, database
