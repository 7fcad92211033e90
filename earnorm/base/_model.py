"""``BaseModel``: a MongoDB document as a typed Python object, with lifecycle hooks.

>>> class User(BaseModel):
...     _collection = "users"
...     email: str
...     status: str = "inactive"
>>> user = User(email="ann@example.com")
>>> await user.create()                       # doctest: +SKIP
>>> (await User.get(user.id)).status          # doctest: +SKIP
'inactive'

See ``earnorm.base._hooks`` for the order hooks run in, and docs/models.md
for the guide.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Self

from bson import ObjectId

from earnorm._environment import Environment, current_environment, register_model
from earnorm._errors import ConfigError, DocumentNotFound, ValidationError
from earnorm._transaction import current_transaction, session_options
from earnorm.base._fields import MISSING, Field, collect_fields, conforms
from earnorm.base._hooks import collect_hooks, run_hooks
from earnorm.base._query import Filter, Query, Sort, mongo_errors, mongo_filter, to_object_id

if TYPE_CHECKING:
    from pymongo.asynchronous.collection import AsyncCollection

Changes = dict[str, tuple[Any, Any]]


def _plain(value: Any) -> Any:
    """ObjectIds as strings, everything else as it is (the event wire handles datetime etc.)."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _differs(old: Any, new: Any) -> bool:
    return type(old) is not type(new) or old != new


class BaseModel:
    """Subclass with annotated fields; see the module docstring.

    Instance state: field values live in the instance ``__dict__`` (so reads are plain attribute
    reads); ``_id`` is the ObjectId once stored; ``_stored_state`` is the last state known to be
    in the database, from which ``get_changes()`` and the ``$set``/``$unset`` of ``save()`` come.

    Subclasses may not redefine BaseModel's private names (``_collection`` aside): hook methods
    are conventionally called ``_before_create`` and the like, and silently replacing an
    internal method would break writes.
    """

    _collection: ClassVar[str]
    _id: ObjectId | None
    _stored_state: dict[str, Any] | None
    _written_changes: Changes | None
    _model_fields: ClassVar[dict[str, Field] | None] = None
    _model_hooks: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        clash = sorted(n for n in vars(cls) if n in _INTERNAL_NAMES)
        if clash:
            raise ConfigError(
                f"{cls.__name__} redefines {', '.join(clash)}: reserved by BaseModel, "
                "pick another name"
            )
        collection = getattr(cls, "_collection", None)
        if collection is None:
            cls._collection = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
        elif not isinstance(collection, str) or not collection or "$" in collection:
            raise ConfigError(f"{cls.__name__}._collection must be a collection name")
        try:
            cls._model_fields = collect_fields(cls, cls.__name__)
        except ConfigError as exc:
            if not isinstance(exc.__cause__, NameError):
                raise
            cls._model_fields = None  # a forward reference: resolved on first use
        cls._model_hooks = collect_hooks(cls)
        register_model(cls)

    @classmethod
    def _get_fields(cls) -> dict[str, Field]:
        fields = cls._model_fields
        if fields is None:
            fields = cls._model_fields = collect_fields(cls, cls.__name__)
        return fields

    def __init__(self, **values: Any) -> None:
        fields = self._get_fields()
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValidationError(
                f"{type(self).__name__}: unknown field(s) {', '.join(unknown)}"
                + (" ('id' is assigned by the database)" if "id" in unknown else "")
            )
        object.__setattr__(self, "_id", None)
        object.__setattr__(self, "_stored_state", None)
        object.__setattr__(self, "_written_changes", None)
        for name, field in fields.items():
            value = field.check(values[name]) if name in values else field.initial()
            if value is not MISSING:
                object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        field = self._get_fields().get(name)
        if field is not None:
            field.check(value)
        elif not name.startswith("_") and not hasattr(type(self), name):
            raise AttributeError(
                f"{type(self).__name__} has no field {name!r} (fields: "
                f"{', '.join(self._get_fields()) or 'none'})"
            )
        object.__setattr__(self, name, value)

    if not TYPE_CHECKING:  # keep static checkers strict about attribute names

        def __getattr__(self, name: str) -> Any:
            if name in type(self)._get_fields():
                raise AttributeError(
                    f"{type(self).__name__}.{name} has no value yet: it is required "
                    "(no default); set it before create()"
                )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ state

    @property
    def id(self) -> str | None:
        """The document's ObjectId as a string; ``None`` until created."""
        oid: ObjectId | None = self._id
        return None if oid is None else str(oid)

    @property
    def _env(self) -> Environment:
        return current_environment()

    def _field_values(self) -> dict[str, Any]:
        state = self.__dict__
        return {name: state[name] for name in self._get_fields() if name in state}

    def to_dict(self) -> dict[str, Any]:
        """``{"id": ..., <field>: <value>, ...}`` with ObjectIds as strings: event data."""
        return {"id": self.id, **_plain(self._field_values())}

    def get_changes(self) -> Changes:
        """``{field: (old, new)}`` for fields that differ from the database. A new instance
        has ``old`` = ``None``. Inside ``after_*`` hooks: what the write just stored."""
        applied: Changes | None = self._written_changes
        if applied is not None:
            return dict(applied)
        saved: dict[str, Any] = self._stored_state or {}
        current = self._field_values()
        changes: Changes = {}
        for name in self._get_fields():
            old, new = saved.get(name), current.get(name)
            if _differs(old, new):
                changes[name] = (old, new)
        return changes

    def _check_before_write(self) -> None:
        """Type-check every value and require the required ones, before a write."""
        state = self.__dict__
        for name, field in self._get_fields().items():
            if name in state:
                field.check(state[name])
            elif field.required:
                raise ValidationError(
                    f"{type(self).__name__}.{name} is required (no default, not Optional)"
                )

    def _stamp(self, names: tuple[str, ...], *, replace: bool = False) -> bool:
        """Keep the timestamps a model declares, as Rails does: a ``created_at`` or
        ``updated_at`` field that takes a datetime is set to now (UTC) on create when the
        hooks left it unset, and ``updated_at`` on every update that did not set it itself
        (``replace``). True if a field was set."""
        fields = self._get_fields()
        now = datetime.now(UTC)
        stamped = False
        for name in names:
            field = fields.get(name)
            if field is None or not conforms(field.annotation, now):
                continue
            if replace or self.__dict__.get(name) is None:
                object.__setattr__(self, name, now)
                stamped = True
        return stamped

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self._field_values().items())
        return f"{type(self).__name__}(id={self.id!r}, {shown})"

    # ------------------------------------------------------------------ reads

    @classmethod
    def _mongo_collection(cls) -> AsyncCollection[dict[str, Any]]:
        return current_environment().database[cls._collection]

    @classmethod
    def _from_document(cls, document: Mapping[str, Any]) -> Self:
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_id", document.get("_id"))
        object.__setattr__(obj, "_written_changes", None)
        for name, field in cls._get_fields().items():
            value = document[name] if name in document else field.initial()
            if value is not MISSING:
                object.__setattr__(obj, name, value)
        object.__setattr__(obj, "_stored_state", copy.deepcopy(obj._field_values()))
        return obj

    @classmethod
    def find(
        cls,
        filter: Filter | None = None,
        *,
        sort: Sort | None = None,
        skip: int = 0,
        limit: int = 0,
        batch_size: int = 0,
    ) -> Query[Self]:
        """Documents matching ``filter``: ``await`` it for a list, ``async for`` to stream.
        ``sort``: ``"field"``, ``"-field"`` or a list of those / ``(field, 1 | -1)``."""
        return Query(
            cls._mongo_collection, cls._from_document, filter,
            sort=sort, skip=skip, limit=limit, batch_size=batch_size,
        )

    @classmethod
    async def find_one(
        cls, filter: Filter | None = None, *, sort: Sort | None = None
    ) -> Self | None:
        found = await cls.find(filter, sort=sort, limit=1)
        return found[0] if found else None

    @classmethod
    async def get(cls, id: str) -> Self | None:
        """The document with this id, or ``None``; ``ValidationError`` for a malformed id."""
        return await cls.find_one({"_id": to_object_id(id)})

    @classmethod
    async def count(cls, filter: Filter | None = None) -> int:
        with mongo_errors(f"count in {cls._collection!r}"):
            return await cls._mongo_collection().count_documents(mongo_filter(filter),
                                                                **session_options())

    @classmethod
    async def exists(cls, filter: Filter | None = None) -> bool:
        return await cls.find_one(filter) is not None

    # ------------------------------------------------------------------ writes

    async def create(self) -> None:
        """Insert this new document: before_write, before_create, checks, insert,
        after_create, after_write."""
        if self._id is not None:
            raise ValidationError(
                f"{type(self).__name__} {self.id} is already stored; use save() or write()"
            )
        hooks = self._model_hooks
        await run_hooks(self, hooks["before_write"])
        await run_hooks(self, hooks["before_create"])
        self._stamp(("created_at", "updated_at"))
        self._check_before_write()
        document = {
            name: value for name, value in self._field_values().items()
            if value is not None or self._get_fields()[name].stored_when_none
        }
        oid = ObjectId()
        with mongo_errors(f"insert into {self._collection!r}"):
            await self._mongo_collection().insert_one({"_id": oid, **document},
                                                   **session_options())
        object.__setattr__(self, "_id", oid)
        changes = {name: (None, value) for name, value in self._field_values().items()}
        await self._finish_write(changes, hooks["after_create"])

    async def save(self) -> None:
        """Insert if new, else update the changed fields only (``$set``; ``$unset`` for
        ``None`` in a field whose default is ``None``). Nothing changed: no write, no hooks.

        Update order: before_write, before_update, checks, update, after_update, after_write.
        """
        if self._id is None:
            await BaseModel.create(self)  # not self.create(): a subclass may override create
            return
        if not self.get_changes():
            return
        hooks = self._model_hooks
        await run_hooks(self, hooks["before_write"])
        await run_hooks(self, hooks["before_update"])
        changes = self.get_changes()
        if not changes:
            return
        if "updated_at" not in changes and self._stamp(("updated_at",), replace=True):
            changes = self.get_changes()
        self._check_before_write()
        fields = self._get_fields()
        unset = {n: "" for n, (_, new) in changes.items()
                 if new is None and not fields[n].stored_when_none}
        update: dict[str, Any] = {}
        to_set = {n: new for n, (_, new) in changes.items() if n not in unset}
        if to_set:
            update["$set"] = to_set
        if unset:
            update["$unset"] = unset
        with mongo_errors(f"update in {self._collection!r}"):
            result = await self._mongo_collection().update_one({"_id": self._id}, update,
                                                               **session_options())
        if result.matched_count == 0:
            raise DocumentNotFound(
                f"{type(self).__name__} {self.id} is not in {self._collection!r} any more"
            )
        await self._finish_write(changes, hooks["after_update"])

    async def write(self, values: Mapping[str, Any]) -> None:
        """Assign ``values`` (all checked before any is assigned), then ``save()``."""
        fields = self._get_fields()
        for name, value in values.items():
            if name not in fields:
                raise ValidationError(f"{type(self).__name__}: unknown field {name!r}")
            fields[name].check(value)
        for name, value in values.items():
            object.__setattr__(self, name, value)
        await self.save()

    async def delete(self) -> None:
        """Delete this document: before_delete, delete, after_delete. The instance keeps its
        id (after_delete hooks may need it); saving it again raises ``DocumentNotFound``."""
        if self._id is None:
            raise ValidationError(f"cannot delete a {type(self).__name__} that was never stored")
        await run_hooks(self, self._model_hooks["before_delete"])
        with mongo_errors(f"delete from {self._collection!r}"):
            result = await self._mongo_collection().delete_one({"_id": self._id},
                                                               **session_options())
        if result.deleted_count == 0:
            raise DocumentNotFound(
                f"{type(self).__name__} {self.id} is not in {self._collection!r} any more"
            )
        await run_hooks(self, self._model_hooks["after_delete"])

    async def _finish_write(self, changes: Changes, first: tuple[str, ...]) -> None:
        """Record the stored state, then run ``first`` and the after_write hooks. An after hook
        that raises stops the later ones and reaches the caller; the write stands."""
        object.__setattr__(self, "_stored_state", copy.deepcopy(self._field_values()))
        object.__setattr__(self, "_written_changes", changes)
        try:
            await run_hooks(self, first)
            await run_hooks(self, self._model_hooks["after_write"])
        except Exception as exc:
            exc.add_note(
                f"{type(self).__name__} {self.id} was already written; "
                "the after hooks after the failing one did not run"
                if current_transaction() is None else
                f"{type(self).__name__} {self.id} is rolled back with the transaction if this "
                "error leaves its block"
            )
            raise
        finally:
            object.__setattr__(self, "_written_changes", None)


_INTERNAL_NAMES = frozenset(
    name for name in vars(BaseModel)
    if name.startswith("_") and not name.startswith("__") and name != "_collection"
) | {"_id", "_stored_state", "_written_changes"}
BaseModel._model_hooks = collect_hooks(BaseModel)
