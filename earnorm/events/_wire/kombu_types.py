"""Kombu's ``{"__type__": T, "__value__": V}`` tagging of non-JSON values, both directions.

Pure functions. ``to_wire`` walks event data before it is serialized: it tags datetime, date,
time, Decimal, UUID and bytes exactly as kombu's JSON encoder does, and rejects everything a
Celery worker could not read back, naming the field path.
"""

from __future__ import annotations

import base64
import math
import sys
import uuid
from datetime import date, datetime, time
from typing import Any

from earnorm._errors import MessageDecodeError, SerializationError

_TAG_KEYS = frozenset({"__type__", "__value__"})
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson and msgpack can both write
_VERBATIM = frozenset({str, bool, type(None)})


def _tag(kind: str, value: Any) -> dict[str, Any]:
    return {"__type__": kind, "__value__": value}


def to_wire(
    value: Any, path: str = "data", *, binary: bool = False, plain: bool = False
) -> Any:
    """Return ``value`` as JSON-native data with kombu tags.

    ``binary=True`` (msgpack) keeps ``bytes`` as they are: msgpack carries them natively.
    ``plain=True`` allows JSON types only (for envelope headers, which are not untagged).

    >>> from decimal import Decimal
    >>> to_wire({"n": Decimal("1.10")})
    {'n': {'__type__': 'decimal', '__value__': '1.10'}}
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise SerializationError(f"{path}: integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SerializationError(f"{path}: {value!r} is not a finite number")
        return value
    if isinstance(value, dict):
        if value.keys() == _TAG_KEYS:
            raise SerializationError(
                f"{path}: a dict with exactly the keys '__type__' and '__value__' is reserved "
                "by kombu's wire format; rename a key"
            )
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                raise SerializationError(
                    f"{path}: dict keys must be strings, got {type(key).__name__} {key!r}"
                )
            # Publishing hot path: plain strings, booleans and None need no walk (nor a path).
            kind = type(item)
            if kind in _VERBATIM or (kind is int and _INT_MIN <= item <= _INT_MAX):
                out[key] = item
            else:
                out[key] = to_wire(item, f"{path}.{key}", binary=binary, plain=plain)
        return out
    if isinstance(value, (list, tuple)):
        return [
            to_wire(item, f"{path}[{i}]", binary=binary, plain=plain)
            for i, item in enumerate(value)
        ]
    if plain:
        raise SerializationError(
            f"{path}: value of type {type(value).__name__} is not allowed here "
            "(JSON types only: str, int, float, bool, None, list, dict)"
        )
    if isinstance(value, datetime):
        return _tag("datetime", value.isoformat())
    if isinstance(value, date):
        return _tag("date", value.isoformat())
    if isinstance(value, time):
        return _tag("time", value.isoformat())
    # decimal is imported only by who makes a Decimal (a consumer never needs it otherwise)
    decimal = sys.modules.get("decimal")
    if decimal is not None and isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise SerializationError(f"{path}: {value!r} is not a finite number")
        return _tag("decimal", str(value))
    if isinstance(value, uuid.UUID):
        return _tag("uuid", {"hex": value.hex})
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if binary:
            return raw
        try:
            return _tag("bytes", raw.decode("utf-8"))
        except UnicodeDecodeError:
            return _tag("base64", base64.b64encode(raw).decode("ascii"))
    raise SerializationError(
        f"{path}: value of type {type(value).__name__} is not serializable "
        "(use str, int, float, bool, None, list, dict, datetime, date, time, Decimal, UUID "
        "or bytes)"
    )


def _untag(kind: Any, value: Any) -> Any:
    try:
        if kind == "datetime":
            return datetime.fromisoformat(value)
        if kind == "date":
            return datetime.fromisoformat(value).date()
        if kind == "time":
            return time.fromisoformat(value)
        if kind == "decimal":
            from decimal import Decimal

            return Decimal(value)
        if kind == "uuid":
            return uuid.UUID(**value) if isinstance(value, dict) else uuid.UUID(value)
        if kind == "bytes":
            return value.encode("utf-8")
        if kind == "base64":
            return base64.b64decode(value, validate=True)
    except (ValueError, TypeError, ArithmeticError, AttributeError) as exc:
        raise MessageDecodeError(f"bad {kind!r} value {value!r}: {exc}") from exc
    raise MessageDecodeError(f"unknown kombu type tag {kind!r}")


def from_wire(value: Any) -> Any:
    """Undo ``to_wire``: turn kombu tags back into Python values."""
    if isinstance(value, dict):
        if len(value) == 2 and value.keys() == _TAG_KEYS:
            return _untag(value["__type__"], value["__value__"])
        return {key: from_wire(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_wire(item) for item in value]
    return value
