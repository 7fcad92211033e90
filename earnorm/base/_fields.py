"""Model fields from class annotations: what a field accepts and how it is stored.

Pure: no I/O. A model's fields are its annotated public attributes; the class attribute of the
same name, if any, is the default.

>>> class Ns:
...     name: str
...     status: str = "inactive"
...     note: str | None = None
>>> [(f.name, f.required) for f in collect_fields(Ns, "Ns").values()]
[('name', True), ('status', False), ('note', False)]
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal, Union

from bson import ObjectId

from earnorm._errors import ConfigError, ValidationError


class _Missing:
    """Marks a field with no default (required) and an unset value."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

# Types BSON stores and gives back as the same Python type. date, Decimal, UUID and sets are not:
# PyMongo would refuse them or return another type, so a field of such a type could never
# round-trip; they are refused when the class is defined.
_SCALARS: tuple[type, ...] = (str, int, float, bool, datetime, bytes, ObjectId)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _check_supported(tp: Any, where: str) -> None:
    """Raise ``ConfigError`` if values of ``tp`` cannot be stored and read back as ``tp``."""
    if tp is Any or tp is type(None) or tp in _SCALARS:
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        for arg in args:
            _check_supported(arg, where)
        return
    if origin is Literal:
        if all(isinstance(a, (str, int, bool)) for a in args):
            return
    elif tp in (list, dict) or origin is list:
        for arg in args:
            _check_supported(arg, where)
        return
    elif origin is dict:
        if args and args[0] is not str:
            raise ConfigError(f"{where}: dict keys must be str (MongoDB document keys)")
        if args:
            _check_supported(args[1], where)
        return
    name = getattr(tp, "__name__", repr(tp))
    raise ConfigError(
        f"{where}: type {name} cannot be stored in MongoDB as it is; use str, int, float, "
        "bool, datetime, bytes, ObjectId, list[...], dict[str, ...], Literal[...], Any or "
        "Optional[...] of those"
    )


def conforms(tp: Any, value: Any) -> bool:
    """Whether ``value`` is a valid value of annotation ``tp``. ``bool`` is not an ``int``;
    an ``int`` is a valid ``float``."""
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if _is_union(tp):
        return any(conforms(arg, value) for arg in typing.get_args(tp))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is list or origin is list:
        return isinstance(value, list) and (
            not args or all(conforms(args[0], item) for item in value)
        )
    if tp is dict or origin is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and (not args or conforms(args[1], v)) for k, v in value.items()
        )
    return isinstance(value, tp)


def describe(tp: Any) -> str:
    """A short readable name for an annotation: ``Optional[str]`` -> ``str | None``."""
    if _is_union(tp):
        return " | ".join(describe(arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_args(tp):
        return repr(tp).replace("typing.", "")
    return getattr(tp, "__name__", repr(tp))


@dataclass(frozen=True, slots=True)
class Field:
    """One model field. ``required``: no default and ``None`` is not allowed."""

    model: str
    name: str
    annotation: Any
    default: Any = MISSING

    @property
    def nullable(self) -> bool:
        return conforms(self.annotation, None)

    @property
    def required(self) -> bool:
        return self.default is MISSING and not self.nullable

    @property
    def stored_when_none(self) -> bool:
        """``None`` in a field whose default is ``None`` is stored as an absent key, so saving
        ``None`` there is an ``$unset`` and reading an absent key gives ``None`` back."""
        return self.default is not None and self.default is not MISSING

    def initial(self) -> Any:
        """The value a new instance starts with: a copy of the default, ``None`` for an
        Optional field without one, or ``MISSING``."""
        if self.default is MISSING:
            return None if self.nullable else MISSING
        return copy.deepcopy(self.default)

    def check(self, value: Any) -> Any:
        """Return ``value`` if it is valid here, else raise ``ValidationError`` naming the
        field."""
        if not conforms(self.annotation, value):
            shown = repr(value)
            if len(shown) > 60:
                shown = shown[:57] + "..."
            raise ValidationError(
                f"{self.model}.{self.name}: expected {describe(self.annotation)}, "
                f"got {type(value).__name__} {shown}"
            )
        return value


def collect_fields(cls: type, model: str) -> dict[str, Field]:
    """The fields of ``cls``: public annotated attributes of it and its bases (not
    ``ClassVar``), in definition order, base classes first."""
    try:
        hints = typing.get_type_hints(cls)
    except NameError as exc:
        raise ConfigError(
            f"{model}: cannot resolve a field annotation ({exc}); define the type before "
            "the model or import it in the model's module"
        ) from exc
    fields: dict[str, Field] = {}
    for name, tp in hints.items():
        if name.startswith("_") or typing.get_origin(tp) is ClassVar or tp is ClassVar:
            continue
        if name == "id":
            raise ConfigError(
                f"{model}.id: 'id' is the document's ObjectId as a string and cannot be "
                "declared as a field"
            )
        _check_supported(tp, f"{model}.{name}")
        default = getattr(cls, name, MISSING)
        field = Field(model, name, tp, default)
        if default is not MISSING:
            field.check(default)
        fields[name] = field
    return fields
