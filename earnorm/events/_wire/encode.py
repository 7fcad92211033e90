"""Celery protocol v2 on Redis, the writing half: events, calls, retries and resets as complete
envelopes (``decode`` reads them). Pure functions, no I/O; ``docs/wire.md`` describes every
field written, and the section numbers below refer to it.
"""

from __future__ import annotations

import base64
import os
import socket
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from earnorm._errors import EventValidationError, SerializationError
from earnorm.events._wire.decode import (
    EMBED,
    H_FIRST_FAILURE,
    H_METADATA,
    H_PENDING,
    H_RATE_SLOT,
    H_TIMESTAMP,
    H_VERSION,
    INTERPRETED_HEADERS,
    JSON,
    MSGPACK,
    ZLIB,
    Message,
)
from earnorm.events._wire.event import Event, new_uuid4
from earnorm.events._wire.kombu_types import to_wire
from earnorm.events._wire.template import plain_envelope

_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
_ORIGIN_JSON = orjson.dumps(_ORIGIN)
_REPR_LIMIT = 1024


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _serialize(body: list[Any], serializer: str) -> bytes:
    try:
        if serializer == "msgpack":
            import msgpack

            packed: bytes = msgpack.packb(body, use_bin_type=True)
            return packed
        return orjson.dumps(body)
    except (TypeError, ValueError) as exc:  # e.g. a lone surrogate in a str
        raise SerializationError(f"data cannot be serialized as {serializer}: {exc}") from exc


def encode_body(
    args: list[Any], kwargs: dict[str, Any], serializer: str, compression: str | None,
    embed: dict[str, Any] | None = None,
) -> tuple[str, str, str]:
    """Serialize ``[args, kwargs, embed]``; return (base64 body, content-type, encoding)."""
    binary = serializer == "msgpack"
    # An event is one positional dict: errors name its fields as ``data.x.y``.
    wired_args = [
        to_wire(arg, "data" if len(args) == 1 else f"args[{i}]", binary=binary)
        for i, arg in enumerate(args)
    ]
    body = [wired_args, to_wire(kwargs, "kwargs", binary=binary),
            EMBED if embed is None else to_wire(embed, "embed", binary=binary)]
    payload = _serialize(body, serializer)
    content_type, content_encoding = (MSGPACK, "binary") if binary else (JSON, "utf-8")
    if compression == "zlib":
        payload = zlib.compress(payload)
    return base64.b64encode(payload).decode("ascii"), content_type, content_encoding


def encode_event(
    event: Event,
    queue: str,
    *,
    serializer: str = "json",
    compression: str | None = None,
    eta: datetime | None = None,
    priority: int = 0,
    reply_to: str | None = None,
) -> bytes:
    """Encode an ``Event`` as a complete Celery protocol-v2 envelope (wire.md 4, 11, 12).

    Every header and property Celery writes is written, so Flower, logs and result handling
    work on a stock worker.
    """
    if not 0 <= priority <= 9:
        raise EventValidationError(f"priority must be in 0..9, got {priority}")
    if (serializer == "json" and compression is None and eta is None and reply_to is None
            and not event.metadata and not event.headers):
        body_json = _serialize([[to_wire(event.data, "data")], {}, EMBED], "json")
        try:  # the common case, written from a byte template (same bytes as below)
            return plain_envelope(
                body_json, event.name, event.id, event.retries, _short_repr([event.data]),
                _ORIGIN_JSON, event.timestamp.isoformat(), event.version, queue, priority,
                new_uuid4(),
            )
        except TypeError as exc:  # a lone surrogate in a string
            raise SerializationError(f"event {event.name!r} cannot be encoded: {exc}") from exc
    return _dict_envelope(event, queue, serializer, compression, eta, priority, reply_to)


def _dict_envelope(
    event: Event, queue: str, serializer: str, compression: str | None, eta: datetime | None,
    priority: int, reply_to: str | None,
) -> bytes:
    args = [event.data]
    body, content_type, content_encoding = encode_body(args, {}, serializer, compression)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": event.name,
        "id": event.id,
        "shadow": None,
        "eta": eta.astimezone(UTC).isoformat() if eta is not None else None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": event.retries,
        "timelimit": [None, None],
        "root_id": event.id,
        "parent_id": None,
        "argsrepr": _short_repr(args),
        "kwargsrepr": "{}",
        "origin": _ORIGIN,
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        H_TIMESTAMP: event.timestamp.isoformat(),
        H_VERSION: event.version,
    }
    if event.metadata:
        # The envelope is read with kombu's tag hook but never untagged by us: JSON types only.
        headers[H_METADATA] = to_wire(event.metadata, "metadata", plain=True)
    if event.headers:
        headers.update(custom_headers(event.headers))
    if compression == "zlib":
        headers["compression"] = ZLIB
    envelope = {
        "body": body,
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": {
            "correlation_id": event.id,
            "reply_to": reply_to or event.id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": new_uuid4(),
        },
    }
    try:
        return orjson.dumps(envelope)
    except TypeError as exc:  # a lone surrogate in the id or metadata
        raise SerializationError(f"event {event.name!r} cannot be encoded: {exc}") from exc


def encode_call(
    task: str,
    task_id: str,
    args: list[Any],
    kwargs: dict[str, Any],
    queue: str,
    *,
    embed: dict[str, Any] | None = None,
    root_id: str | None = None,
    parent_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    priority: int = 0,
    eta: datetime | None = None,
    serializer: str = "json",
    compression: str | None = None,
) -> bytes:
    """Any Celery task call as a complete protocol-v2 envelope: what a worker publishes for the
    next step of a chain, a ``link`` callback or a ``link_error`` errback."""
    body, content_type, content_encoding = encode_body(args, kwargs, serializer, compression,
                                                       embed)
    all_headers: dict[str, Any] = {
        "lang": "py", "task": task, "id": task_id, "shadow": None,
        "eta": eta.astimezone(UTC).isoformat() if eta is not None else None,
        "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": root_id or task_id, "parent_id": parent_id,
        "argsrepr": _short_repr(args), "kwargsrepr": _short_repr(kwargs), "origin": _ORIGIN,
        "ignore_result": False, "replaced_task_nesting": 0, "stamped_headers": None,
        "stamps": {},
    }
    if headers:
        all_headers.update(custom_headers(headers))
    if compression == "zlib":
        all_headers["compression"] = ZLIB
    return orjson.dumps({
        "body": body, "content-encoding": content_encoding, "content-type": content_type,
        "headers": all_headers,
        "properties": {
            "correlation_id": task_id, "reply_to": task_id, "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": min(max(priority, 0), 9), "body_encoding": "base64",
            "delivery_tag": new_uuid4(),
        },
    })


def custom_headers(given: Mapping[str, Any]) -> dict[str, Any]:
    """Headers a publisher adds, checked: a name Celery or EarnORM interprets would change what
    the message means, so it is refused; values must be JSON (they travel in the envelope).

    >>> custom_headers({"tenant": "acme", "traceparent": "00-ab-cd-01"})
    {'tenant': 'acme', 'traceparent': '00-ab-cd-01'}
    >>> custom_headers({"eta": "2030-01-01"})
    Traceback (most recent call last):
    ...
    earnorm._errors.EventValidationError: header 'eta' is Celery's or EarnORM's own: ...
    """
    out: dict[str, Any] = {}
    for name, value in given.items():
        if not isinstance(name, str) or not name:
            raise EventValidationError(f"header names must be non-empty strings: {name!r}")
        if name in INTERPRETED_HEADERS:
            raise EventValidationError(
                f"header {name!r} is Celery's or EarnORM's own: it cannot be set as a custom "
                "header (use publish()'s delay=/priority= or the event's fields)"
            )
        out[name] = to_wire(value, f"headers.{name}", plain=True)
    return out


def _reissue(message: Message, headers: dict[str, Any], **properties: Any) -> bytes:
    """``message`` as a new delivery: the given headers, a fresh ``delivery_tag``."""
    envelope = dict(message.envelope)
    envelope["headers"] = headers
    envelope["properties"] = {**message.properties, "delivery_tag": new_uuid4(), **properties}
    return orjson.dumps(envelope)


def encode_retry(
    message: Message, eta: datetime, pending: list[str] | None = None
) -> bytes:
    """The message as Celery's own ``self.retry()`` republishes it (wire.md 10): same id and body,
    ``retries`` + 1, ``eta``, ``parent_id`` = id, a new ``delivery_tag``."""
    headers = dict(message.headers)
    headers["retries"] = message.retries + 1
    headers["eta"] = eta.astimezone(UTC).isoformat()
    headers["parent_id"] = message.id
    headers["ignore_result"] = False
    headers.setdefault(H_FIRST_FAILURE, datetime.now(UTC).isoformat())
    headers.pop(H_RATE_SLOT, None)  # a retry takes a slot of its own
    if pending is not None:
        headers[H_PENDING] = pending
    return _reissue(message, headers, origin=_ORIGIN)


def encode_rate_slot(message: Message, slot_us: int) -> bytes:
    """The message as it waits for the slot a rate limit reserved for it: unchanged but for
    ``eta`` (the slot, on Redis's clock as every due time is), so a Celery worker would hold it
    until then too, and ``earnorm_rate_slot``, so it then runs without taking another slot."""
    headers = dict(message.headers)
    headers["eta"] = datetime.fromtimestamp(slot_us / 1e6, UTC).isoformat()
    headers[H_RATE_SLOT] = slot_us
    return _reissue(message, headers)


def encode_reset(
    message: Message, *, pending: list[str] | None = None, clear_expires: bool = False
) -> bytes:
    """The message with its retry state cleared, for ``retry_job``: ``pending`` limits the run
    to those handlers; ``clear_expires`` lets an expired job run instead of expiring again."""
    headers = dict(message.headers)
    headers["retries"] = 0
    headers["eta"] = None
    headers.pop(H_PENDING, None)
    headers.pop(H_FIRST_FAILURE, None)
    headers.pop(H_RATE_SLOT, None)
    if pending is not None:
        headers[H_PENDING] = pending
    if clear_expires:
        headers["expires"] = None
    return _reissue(message, headers)
