"""The ``Event`` value object: what publishers send and handlers receive."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from earnorm._errors import EarnORMError, EventValidationError
from earnorm.events._wire.progress import check_state, progress_info, progress_sink

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
MAX_NAME_LENGTH = 255
_VALID_NAMES: set[str] = set()
_VALID_NAMES_MAX = 10_000


def validate_event_name(name: str) -> str:
    """Return ``name`` if it is a valid event name, else raise ``EventValidationError``.

    A valid name is lowercase, dot-separated, with at least two parts:
    ``user.created``, ``order.payment.completed``.
    """
    if not isinstance(name, str):
        raise EventValidationError(f"event name must be a string, got {type(name).__name__}")
    if name in _VALID_NAMES:
        return name
    if len(name) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(name):
        raise EventValidationError(
            f"invalid event name {name!r}: use lowercase dot-separated namespaces "
            "such as 'user.created' or 'order.payment.completed' "
            "(letters, digits and '_' in each part, at least two parts)"
        )
    if len(_VALID_NAMES) < _VALID_NAMES_MAX:  # names are few; the regex need not run each time
        _VALID_NAMES.add(name)
    return name


_random_pool = bytearray()
# A forked child must not hand out the parent's remaining random bytes again.
os.register_at_fork(after_in_child=_random_pool.clear)


def new_uuid4() -> str:
    """A random (version 4) UUID in canonical text form, several times cheaper than
    ``str(uuid.uuid4())``: random bytes come from the OS in blocks, not one syscall each."""
    if len(_random_pool) < 16:
        _random_pool.extend(os.urandom(4096))
    raw = _random_pool[-16:]
    del _random_pool[-16:]
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_new_id = new_uuid4


_NO_HEADERS: Mapping[str, Any] = MappingProxyType({})


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Event:
    """An event: a name, its data and bookkeeping.

    >>> Event(name="user.created", data={"user_id": 7}).name
    'user.created'

    ``args``/``kwargs`` hold the raw Celery call arguments of a consumed message; for events
    published by EarnORM they are ``([data], {})``. See docs/celery.md, "Mapping rules".
    """

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=_new_id)
    timestamp: datetime = field(default_factory=_utcnow)
    version: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)
    # Delivery details, not part of the event's identity: equal events compare equal however
    # often they were retried or whoever published them.
    retries: int = field(default=0, compare=False)
    args: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)
    kwargs: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    # The message's headers that EarnORM does not interpret (``traceparent``, a tenant, ...),
    # read-only; ``publish(..., headers=...)`` writes them.
    headers: Mapping[str, Any] = field(default_factory=lambda: _NO_HEADERS, compare=False,
                                       repr=False)

    @classmethod
    def trusted(
        cls, *, name: str, data: dict[str, Any], id: str, timestamp: datetime, version: int,
        metadata: dict[str, Any], retries: int, args: tuple[Any, ...] | None,
        kwargs: dict[str, Any] | None, headers: Mapping[str, Any] = _NO_HEADERS,
    ) -> Event:
        """Build an event from already-checked parts, skipping validation (the consume path,
        where names follow Celery's rules and the decoder has checked the types)."""
        event = object.__new__(cls)
        # The slots' own descriptors: what object.__setattr__ does, without its name lookup.
        s_name, s_data, s_id, s_stamp, s_version, s_meta, s_retries, s_args, s_kwargs, \
            s_headers = _SLOT_SETTERS
        s_name(event, name)
        s_data(event, data)
        s_id(event, id)
        s_stamp(event, timestamp)
        s_version(event, version)
        s_meta(event, metadata)
        s_retries(event, retries)
        s_args(event, args)
        s_kwargs(event, kwargs)
        s_headers(event, headers)
        return event

    async def progress(self, done: float, total: float | None = None, *,
                       state: str = "PROGRESS", **meta: Any) -> None:
        """Report how far the handler running this event has got.

        A Celery client reads the report as ``AsyncResult.state`` (``state``, ``"PROGRESS"``
        unless named) and ``AsyncResult.info`` (``{"done": done, "total": total, **meta}``)
        when the queue has a result backend; Flower sees a ``task-progress`` event when Celery
        events are on; the dashboard's event view shows it. Reports closer than 0.1 s to the
        last one written are dropped (the next one carries on), except the one that reaches
        ``total``::

            @event_handler("import.requested")
            async def run_import(event: Event) -> None:
                rows = await load_rows(event.data["file"])
                for n, chunk in enumerate(chunked(rows, 500), 1):
                    await insert(chunk)
                    await event.progress(n * 500, len(rows), file=event.data["file"])

        ``EarnORMError`` outside a handler an EarnORM consumer is running (for this event);
        ``EventValidationError`` for a bad number, a state of Celery's own (``SUCCESS``, ...)
        or meta JSON cannot carry. A Redis error while writing it is logged, not raised: a
        report never fails the handler.
        """
        info = progress_info(done, total, meta)
        sink = progress_sink.get()
        if sink is None:
            raise EarnORMError(
                f"event.progress() for {self.name} ({self.id}) outside a consumer: it reports "
                "for a handler that an EarnORM consumer is running")
        await sink.report(self.id, check_state(state), info)

    def __post_init__(self) -> None:
        validate_event_name(self.name)
        if not isinstance(self.data, dict):
            raise EventValidationError(
                f"event data must be a dict, got {type(self.data).__name__}"
            )
        if not isinstance(self.id, str) or not self.id:
            raise EventValidationError("event id must be a non-empty string")
        if not isinstance(self.version, int) or isinstance(self.version, bool):
            raise EventValidationError("event version must be an int")
        if not isinstance(self.metadata, dict):
            raise EventValidationError("event metadata must be a dict")
        if self.headers is not _NO_HEADERS:
            if not isinstance(self.headers, Mapping) or not all(
                    isinstance(k, str) for k in self.headers):
                raise EventValidationError("event headers must be a mapping with str keys")
            object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))
        if self.timestamp.tzinfo is None:
            object.__setattr__(self, "timestamp", self.timestamp.replace(tzinfo=UTC))


# Event.trusted's setters, one per slot, in its order (a new field fails here at import).
_SLOT_SETTERS = tuple(Event.__dict__[name].__set__ for name in (
    "name", "data", "id", "timestamp", "version", "metadata", "retries", "args", "kwargs",
    "headers"))
if len(_SLOT_SETTERS) != len(Event.__slots__):
    raise RuntimeError("Event.trusted must set every field of Event")
