"""``Model.find(...)``: a query you can ``await`` for a list or ``async for`` over in batches.

Filters are MongoDB filter documents. The key ``id`` means the document's ``_id``; its values
may be the id strings models expose (``{"id": user.id}``, ``{"id": {"$in": ids}}``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from bson import ObjectId
from bson.errors import InvalidId
from pymongo.errors import PyMongoError

from earnorm._errors import DatabaseError, ValidationError
from earnorm._transaction import session_options

if TYPE_CHECKING:
    from pymongo.asynchronous.collection import AsyncCollection

T = TypeVar("T")

Filter = Mapping[str, Any]
Sort = str | Sequence[str | tuple[str, int]]


@contextlib.contextmanager
def mongo_errors(action: str) -> Iterator[None]:
    """Re-raise PyMongo's errors as ``DatabaseError`` saying what was being done."""
    try:
        yield
    except PyMongoError as exc:
        raise DatabaseError(f"{action} failed: {type(exc).__name__}: {exc}") from exc


def to_object_id(value: Any) -> ObjectId:
    """``"65a1...e9"`` -> ``ObjectId("65a1...e9")``; ``ValidationError`` if it is not one."""
    if isinstance(value, ObjectId):
        return value
    try:
        return ObjectId(value)
    except (InvalidId, TypeError) as exc:
        raise ValidationError(f"id: {value!r} is not a valid ObjectId string") from exc


def _id_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {op: _id_value(arg) for op, arg in value.items()}
    if isinstance(value, (list, tuple)):
        return [_id_value(item) for item in value]
    return to_object_id(value) if isinstance(value, str) else value


def mongo_filter(filter: Filter | None) -> dict[str, Any]:
    """The filter as MongoDB wants it: ``id`` -> ``_id`` with string ids made ObjectIds."""
    if filter is None:
        return {}
    if not isinstance(filter, Mapping):
        raise ValidationError(f"filter must be a dict, got {type(filter).__name__}")
    out = dict(filter)
    if "id" in out:
        out["_id"] = _id_value(out.pop("id"))
    return out


def mongo_sort(sort: Sort | None) -> list[tuple[str, int]] | None:
    """``"-created_at"`` or ``["status", ("email", 1)]`` -> PyMongo's key/direction list."""
    if sort is None:
        return None
    items = [sort] if isinstance(sort, str) else list(sort)
    keys: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, str):
            key, direction = (item[1:], -1) if item.startswith("-") else (item, 1)
        else:
            key, direction = item
        if direction not in (1, -1):
            raise ValidationError(f"sort direction for {key!r} must be 1 or -1, got {direction!r}")
        keys.append(("_id" if key == "id" else key, direction))
    return keys


class Query(Generic[T]):
    """Lazy: nothing runs until awaited or iterated::

        users = await User.find({"status": "active"}, sort="-created_at", limit=10)
        async for user in User.find({}, batch_size=500):  # streams, one batch in memory
            print(user.email)
    """

    def __init__(
        self,
        collection: Callable[[], AsyncCollection[dict[str, Any]]],
        load: Callable[[dict[str, Any]], T],
        filter: Filter | None,
        *,
        sort: Sort | None = None,
        skip: int = 0,
        limit: int = 0,
        batch_size: int = 0,
    ) -> None:
        for name, number in (("skip", skip), ("limit", limit), ("batch_size", batch_size)):
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise ValidationError(f"{name} must be a non-negative int, got {number!r}")
        self._collection = collection
        self._load = load
        self._filter = mongo_filter(filter)
        self._sort = mongo_sort(sort)
        self._skip = skip
        self._limit = limit
        self._batch_size = batch_size


    async def to_list(self) -> list[T]:
        return [item async for item in self]

    def __await__(self) -> Generator[Any, None, list[T]]:
        return self.to_list().__await__()

    async def __aiter__(self) -> AsyncIterator[T]:
        collection = self._collection()
        action = f"find in {collection.name!r}"
        cursor = collection.find(
            self._filter, sort=self._sort, skip=self._skip, limit=self._limit,
            batch_size=self._batch_size, **session_options(),
        )
        try:
            while True:
                with mongo_errors(action):
                    document = await anext(cursor, None)
                if document is None:
                    return
                yield self._load(document)
        finally:
            # Breaking out early must not leave a server-side cursor open.
            await cursor.close()
