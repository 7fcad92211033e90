"""Where a publish goes instead of Redis, and what the bus may ask of a relay: the two seams
through which the ORM plugs into the event system without the event system knowing the ORM.

Inside ``earnorm.transaction()`` the ORM sets a ``Stage`` for the running context: the bus then
hands each encoded message to it (the ORM writes them to its outbox collection in the
transaction) instead of pushing to Redis. An ``Outbox`` is the ORM's relay when one runs in
this process: the bus shows it in ``stats()``, and ``earnorm.close()`` stops it. A process
without the ORM never sets either, and pays one ``ContextVar.get`` per publish.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple, Protocol


class Staged(NamedTuple):
    """One encoded message held back until the context that staged it commits."""

    event_id: str
    raw: bytes
    ready_index: int  # the ready list (by priority) it goes to
    due_ms: float | None  # for the delayed set; None: ready now
    dedup_key: str | None


class Stage(Protocol):
    async def stage(self, queue: str, items: list[Staged]) -> None: ...


class Outbox(Protocol):
    async def stats(self) -> dict[str, Any]: ...
    async def stop(self) -> None: ...


_current: ContextVar[Stage | None] = ContextVar("earnorm_stage", default=None)


def current() -> Stage | None:
    """The stage of the running context, if one is set."""
    return _current.get()


@contextmanager
def staging(stage: Stage) -> Iterator[None]:
    """Publishes in this context (and tasks started from it) go to ``stage``."""
    token = _current.set(stage)
    try:
        yield
    finally:
        _current.reset(token)
