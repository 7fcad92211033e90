"""Celery protocol v2 on Redis, as pure functions: bytes in, typed objects out (``encode``
writes them back).

No I/O here (like h11): the broker moves bytes, this module gives them meaning. Every field
written and every rule enforced is described in ``docs/wire.md``; the section numbers
below refer to it.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import lzma
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

from earnorm._errors import (
    MessageDecodeError,
    UnsupportedProtocol,
)
from earnorm.events._wire.event import _NO_HEADERS, Event
from earnorm.events._wire.kombu_types import from_wire, to_wire

JSON = "application/json"
MSGPACK = "application/x-msgpack"
ZLIB = "application/x-gzip"  # kombu's name for zlib (wire.md 5): the bytes are an RFC 1950 stream
EMBED: dict[str, None] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

# Extra headers that carry what a Celery task has no field for (wire.md 4: custom headers are fine).
H_TIMESTAMP = "earnorm_timestamp"
H_VERSION = "earnorm_version"
H_METADATA = "earnorm_metadata"
H_PENDING = "earnorm_pending"  # handlers still to run on a retry (earlier ones succeeded)
H_FIRST_FAILURE = "earnorm_first_failure"
# The slot (us, Redis's clock) a rate limit reserved for the message: it runs then, unlimited.
H_RATE_SLOT = "earnorm_rate_slot"

# The headers EarnORM interprets (Celery's protocol-2 headers, kombu's, ours): every other header
# is the user's, kept on ``event.headers`` across retries, dead letters and ``retry_job``.
INTERPRETED_HEADERS = frozenset({
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps", "compression", "redelivered",
    H_TIMESTAMP, H_VERSION, H_METADATA, H_PENDING, H_FIRST_FAILURE, H_RATE_SLOT,
})

_DECOMPRESSORS: dict[str, Callable[[], Any]] = {
    ZLIB: zlib.decompressobj,
    "application/x-bz2": bz2.BZ2Decompressor,
    "application/x-lzma": lzma.LZMADecompressor,
}


def _decompress(kind: str, data: bytes, limit: int | None) -> bytes:
    """Inflate ``data`` but never past ``limit`` bytes: a small compressed message must not be
    able to expand into gigabytes in the consumer (a "zip bomb")."""
    factory = _DECOMPRESSORS.get(kind)
    if factory is None:
        raise MessageDecodeError(f"unsupported compression {kind!r}")
    cap = -1 if limit is None else limit + 1
    try:
        inflater = factory()
        if kind == ZLIB:  # zlib's cap is positional and 0 means "no cap"
            out: bytes = inflater.decompress(data, max(cap, 0))
            complete = inflater.eof and not inflater.unconsumed_tail
        else:
            out = inflater.decompress(data, max_length=cap)
            complete = inflater.eof
    except Exception as exc:
        raise MessageDecodeError(f"body does not decompress as {kind}: {exc}") from exc
    if limit is not None and len(out) > limit:
        raise MessageDecodeError(
            f"body inflates past the limit of {limit} bytes ({kind}); refused"
        )
    if not complete:
        raise MessageDecodeError(f"body does not decompress as {kind}: truncated stream")
    return out


_REFUSED = ("pickle", "yaml", "python-serialize")


@dataclass(slots=True)
class Message:
    """A decoded Celery task message."""

    task: str
    id: str
    args: list[Any]
    kwargs: dict[str, Any]
    headers: dict[str, Any]
    properties: dict[str, Any]
    envelope: dict[str, Any]
    eta: datetime | None
    expires: datetime | None
    retries: int
    priority: int
    embed: dict[str, Any] | None = None

    @property
    def published_as_event(self) -> bool:
        """Whether EarnORM published it as an ``Event`` (it carries our version header), as
        opposed to a task call from a Celery producer."""
        return H_VERSION in self.headers

    def celery_extras(self) -> dict[str, Any]:
        """Celery workflow fields EarnORM does not act on, kept so handlers can see them: the
        body's ``callbacks``/``errbacks``/``chain``/``chord`` (a ``link=``) and ``group`` /
        ``group_index``. Only the ones that are set."""
        embed, headers = self.embed, self.headers
        # The common message has none: two C-level checks, no dict built (hot path).
        if not (embed and any(embed.values())) and headers.get("group") is None \
                and headers.get("group_index") is None:
            return {}
        extras = {k: v for k, v in (embed or {}).items() if k in EMBED and v}
        for key in ("group", "group_index"):
            if headers.get(key) is not None:
                extras[key] = headers[key]
        return extras

    def to_event(self) -> Event:
        """Map the task call onto an ``Event`` (docs/celery.md, "Mapping rules").

        One positional dict and no kwargs: that dict is ``data``. Only kwargs: they are
        ``data``. Anything else: ``data = {"args": [...], "kwargs": {...}}``. The raw call is
        always kept in ``event.args`` / ``event.kwargs``. Link callbacks and group membership
        are not acted on; they are kept in ``event.metadata["celery"]``.
        """
        args, kwargs = self.args, self.kwargs
        if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
            data: dict[str, Any] = args[0]
        elif not args:
            data = kwargs
        else:
            data = {"args": args, "kwargs": kwargs}
        headers = self.headers
        stamp = _parse_time(headers.get(H_TIMESTAMP), "earnorm_timestamp") or datetime.now(UTC)
        version = headers.get(H_VERSION, 1)
        metadata = headers.get(H_METADATA) or {}
        extras = self.celery_extras()
        if extras and isinstance(metadata, dict) and "celery" not in metadata:
            metadata = {**metadata, "celery": extras}
        # One C-level subset test on the hot path; a dict only when there are any.
        custom = None if INTERPRETED_HEADERS.issuperset(headers) else {
            k: v for k, v in headers.items() if k not in INTERPRETED_HEADERS}
        # Consumed names follow Celery's rules, not our publishing rules: no validation here.
        return Event.trusted(
            name=self.task,
            data=data,
            id=self.id,
            timestamp=stamp,
            version=version if isinstance(version, int) else 1,
            metadata=metadata if isinstance(metadata, dict) else {},
            retries=self.retries,
            args=tuple(args),
            kwargs=kwargs,
            headers=MappingProxyType(custom) if custom else _NO_HEADERS,
        )


def _parse_time(value: Any, field: str) -> datetime | None:
    """ISO-8601 as Celery writes it; naive means UTC (wire.md 7)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise MessageDecodeError(f"header {field!r} must be an ISO-8601 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)  # Python 3.11 reads a trailing "Z" itself
    except ValueError as exc:
        raise MessageDecodeError(f"invalid {field} value {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if 1 < parsed.year < 9999:  # the hot path: nothing near the ends of the calendar
        return parsed
    try:
        parsed.timestamp()  # years 1 and 9999 with an offset fall outside what can be compared
    except (OverflowError, ValueError, OSError) as exc:
        raise MessageDecodeError(f"{field} value {value!r} is out of range") from exc
    return parsed


# ---------------------------------------------------------------------------------- decode


def decode(raw: bytes | str, max_bytes: int | None = None) -> Message:
    """Decode one Redis list element into a ``Message``; raise ``MessageDecodeError`` with a
    reason a human can act on for every malformed input of wire.md 9.

    ``MessageDecodeError`` is the only exception it raises, whatever the bytes: a consumer
    relies on that to dead-letter garbage instead of crashing on it.
    """
    try:
        return _decode(raw, max_bytes)
    except MessageDecodeError:
        raise
    except Exception as exc:  # the trust boundary: nothing unexpected may escape
        raise MessageDecodeError(f"malformed message ({type(exc).__name__}: {exc})") from exc


def _decode(raw: bytes | str, max_bytes: int | None) -> Message:
    if max_bytes is not None and len(raw) > max_bytes:
        raise MessageDecodeError(f"message of {len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MessageDecodeError(f"envelope is not JSON: {exc}") from exc
    if not isinstance(envelope, dict):
        raise MessageDecodeError(f"envelope must be a JSON object, got {type(envelope).__name__}")
    headers = envelope.get("headers")
    if not isinstance(headers, dict):
        raise MessageDecodeError(
            "envelope has no 'headers' object (Celery protocol v1 or not a task message)"
        )
    task, task_id = headers.get("task"), headers.get("id")
    if not isinstance(task, str) or not task:
        translated = _from_protocol_1(envelope, headers, max_bytes)
        if translated is None:
            raise MessageDecodeError("headers.task is missing or not a string")
        envelope, headers = translated
        task, task_id = headers["task"], headers["id"]
    if not isinstance(task_id, str) or not task_id:
        raise MessageDecodeError("headers.id is missing or not a string")
    properties = envelope.get("properties")
    if properties is None:
        properties = {}
    elif not isinstance(properties, dict):
        raise MessageDecodeError("envelope 'properties' must be an object")
    try:
        args, kwargs, embed = decode_body(envelope, headers, properties, max_bytes)
    except MessageDecodeError as exc:  # filed under the id and task its headers name
        raise MessageDecodeError(str(exc), task_id, task) from exc
    retries = headers.get("retries") or 0
    priority = properties.get("priority")
    eta, expires = headers.get("eta"), headers.get("expires")
    return Message(  # positional: half the cost of keywords, on every message
        task, task_id, args, kwargs, headers, properties, envelope,
        None if eta is None else _parse_time(eta, "eta"),
        None if expires is None else _parse_time(expires, "expires"),
        retries if isinstance(retries, int) and not isinstance(retries, bool) else 0,
        priority if isinstance(priority, int) and not isinstance(priority, bool) else 0,
        embed,
    )


def _plain_body(
    envelope: dict[str, Any], headers: dict[str, Any], properties: dict[str, Any],
) -> tuple[list[Any], dict[str, Any], dict[str, Any] | None] | None:
    """The common body (base64 JSON, uncompressed, ``[args, kwargs, embed]``: what EarnORM
    and Celery's JSON default write) in one call, or None when it is anything else or
    anything is wrong with it: ``decode_body`` then takes the general way, which decodes it
    or says what is wrong."""
    body = envelope.get("body")
    if not (properties.get("body_encoding") == "base64" and type(body) is str
            and envelope.get("content-type") == JSON and "compression" not in headers):
        return None
    try:
        data = binascii.a2b_base64(body, strict_mode=True)
        decoded = orjson.loads(data)
    except (binascii.Error, ValueError):  # orjson's error is a ValueError
        return None
    if b"__type__" in data:
        return None
    if type(decoded) is not list or len(decoded) != 3:
        return None
    args, kwargs, embed = decoded
    if type(args) is not list or type(kwargs) is not dict or not (
            embed is None or type(embed) is dict):
        return None
    return args, kwargs, embed


def _from_protocol_1(
    envelope: dict[str, Any], headers: dict[str, Any], max_bytes: int | None
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Celery's protocol 1 (``task_protocol=1``, still run by Celery 5.7's worker) puts the
    task name, id and call in the body (``task, id, args, kwargs, eta, expires, retries,
    callbacks, errbacks, chord, utc``). Translated into the protocol-2 envelope and headers a
    v2 producer would have sent, so it runs like one and its retry is published as v2. None if
    the body is not a protocol-1 call either."""
    properties = envelope.get("properties")
    try:
        body = decode_body_value(envelope, headers,
                                 properties if isinstance(properties, dict) else {}, max_bytes)
    except MessageDecodeError:
        return None
    if not (isinstance(body, dict) and isinstance(body.get("task"), str) and body["task"]
            and isinstance(body.get("id"), str) and body["id"]):
        return None
    args, kwargs = body.get("args") or [], body.get("kwargs") or {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise UnsupportedProtocol("Celery protocol 1 message whose args/kwargs are not a list "
                                  "and a dict", body["id"], body["task"])
    task_id = body["id"]
    v2_headers = {
        **{k: v for k, v in headers.items() if k != "compression"},
        "lang": "py", "task": body["task"], "id": task_id, "eta": body.get("eta"),
        "expires": body.get("expires"), "retries": body.get("retries") or 0,
        "root_id": headers.get("root_id") or task_id, "parent_id": headers.get("parent_id"),
        "group": body.get("taskset"),
    }
    embed = {"callbacks": body.get("callbacks"), "errbacks": body.get("errbacks"),
             "chain": None, "chord": body.get("chord")}
    v2_envelope = {
        **envelope, "headers": v2_headers, "content-type": JSON, "content-encoding": "utf-8",
        # Values kombu tagged (datetime, Decimal, ...) were read back: tagged again.
        "body": base64.b64encode(orjson.dumps(
            to_wire([args, kwargs, embed], "body", plain=False))).decode(),
        "properties": {**(properties if isinstance(properties, dict) else {}),
                       "body_encoding": "base64"},
    }
    return v2_envelope, v2_headers


def decode_body(
    envelope: dict[str, Any], headers: dict[str, Any], properties: dict[str, Any],
    max_bytes: int | None = None,
) -> tuple[list[Any], dict[str, Any], dict[str, Any] | None]:
    """Body -> (args, kwargs, embed): body_encoding, then compression, then content-type
    (wire.md 12)."""
    parts = _plain_body(envelope, headers, properties)
    if parts is not None:
        return parts
    return _split_body(decode_body_value(envelope, headers, properties, max_bytes))


def decode_body_value(
    envelope: dict[str, Any], headers: dict[str, Any], properties: dict[str, Any],
    max_bytes: int | None = None,
) -> Any:
    """The deserialized body, whatever its shape."""
    body = envelope.get("body")
    if not isinstance(body, str):
        raise MessageDecodeError("envelope has no 'body' string")
    content_type = envelope.get("content-type")
    if not isinstance(content_type, str):
        raise MessageDecodeError("envelope has no 'content-type'")
    if content_type not in (JSON, MSGPACK):
        if any(word in content_type for word in _REFUSED):
            raise MessageDecodeError(
                f"refused content type {content_type!r}: never deserialized"
            )
        raise MessageDecodeError(f"unsupported content type {content_type!r}")
    encoding = properties.get("body_encoding")
    if encoding == "base64":
        try:  # strict: what b64decode(validate=True) refuses, without its regex pass
            data = binascii.a2b_base64(body, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise MessageDecodeError(f"body is not valid base64: {exc}") from exc
    elif not encoding or (isinstance(encoding, str) and encoding.lower() == "utf-8"):
        # kombu reads a missing, empty or "utf-8" (any case) body_encoding as plain text
        # (Channel.decode_body); some non-Python producers label plain JSON that way.
        data = body.encode("utf-8")
    else:
        raise MessageDecodeError(f"unsupported body_encoding {encoding!r}")
    compression = headers.get("compression")
    if compression is not None:
        if not isinstance(compression, str):
            raise MessageDecodeError(f"unsupported compression {compression!r}")
        data = _decompress(compression, data, max_bytes)
    try:
        if content_type == JSON:
            decoded = orjson.loads(data)
        else:
            import msgpack  # only where a msgpack message arrives: a consumer's memory

            decoded = msgpack.unpackb(data, raw=False, strict_map_key=False, timestamp=3)
    except Exception as exc:
        reason = str(exc) or type(exc).__name__  # msgpack's errors often have no text
        raise MessageDecodeError(f"body is not valid {content_type}: {reason}") from exc
    if b"__type__" in data:
        decoded = from_wire(decoded)
    return decoded


def _split_body(decoded: Any) -> tuple[list[Any], dict[str, Any], dict[str, Any] | None]:
    embed: Any = None
    if isinstance(decoded, dict):  # the "hybrid" form a worker accepts (wire.md 5)
        args, kwargs = decoded.get("args", []), decoded.get("kwargs", {})
    elif isinstance(decoded, list) and len(decoded) == 3:
        args, kwargs, embed = decoded
        if embed is not None and not isinstance(embed, dict):
            raise MessageDecodeError("body[2] (embed) must be an object or null")
    elif isinstance(decoded, list):
        raise MessageDecodeError(
            f"body must be [args, kwargs, embed]; got a list of {len(decoded)} element(s)"
        )
    else:
        raise MessageDecodeError(f"body must be a list or object, got {type(decoded).__name__}")
    if not isinstance(args, list):
        raise MessageDecodeError("body args must be a list")
    if not isinstance(kwargs, dict):
        raise MessageDecodeError("body kwargs must be an object")
    return args, kwargs, embed
