"""CRUD on a MongoDB-wire server: reads, inserts, changed-field updates, deletes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Optional

import pytest
from bson import ObjectId

from earnorm import BaseModel, DatabaseError, DocumentNotFound, ValidationError
from earnorm._environment import Environment

pytestmark = pytest.mark.anyio


class Item(BaseModel):
    _collection = "items"

    name: str
    qty: int = 0
    tags: list[str] = []  # noqa: RUF012 - a field default, copied per instance
    note: Optional[str] = None  # noqa: UP045
    label: str | None = "new"
    seen_at: datetime | None = None


async def raw(env: Environment, item: Item) -> dict[str, object] | None:
    """The stored document, read around the ORM."""
    return await env.database["items"].find_one({"_id": ObjectId(item.id)})


async def make(*names: str) -> list[Item]:
    items = [Item(name=name, qty=i) for i, name in enumerate(names)]
    for item in items:
        await item.create()
    return items


async def test_create_assigns_an_objectid_string_and_stores_the_fields(orm: Environment) -> None:
    item = Item(name="pen", qty=2, tags=["office"])
    await item.create()
    assert item.id is not None and ObjectId.is_valid(item.id)
    stored = await raw(orm, item)
    assert stored == {"_id": ObjectId(item.id), "name": "pen", "qty": 2, "tags": ["office"],
                      "label": "new"}


async def test_get_returns_an_equal_instance_or_none(orm: Environment) -> None:
    (item,) = await make("pen")
    got = await Item.get(item.id or "")
    assert got is not None and (got.id, got.name, got.qty) == (item.id, "pen", 0)
    assert await Item.get(str(ObjectId())) is None
    with pytest.raises(ValidationError, match="not a valid ObjectId"):
        await Item.get("nope")


async def test_create_refuses_a_missing_required_field_and_writes_nothing(
    orm: Environment
) -> None:
    with pytest.raises(ValidationError, match=r"Item\.name is required"):
        await Item().create()
    assert await Item.count() == 0


async def test_wrong_type_put_in_a_mutable_value_is_caught_before_the_write(
    orm: Environment
) -> None:
    (item,) = await make("pen")
    item.tags.append(7)  # type: ignore[arg-type]  # bypasses assignment checks
    with pytest.raises(ValidationError, match=r"Item\.tags: expected list\[str\]"):
        await item.save()
    assert (await raw(orm, item) or {})["tags"] == []


async def test_find_filters_sorts_skips_and_limits(orm: Environment) -> None:
    await make("a", "b", "c", "d", "e")
    names = [i.name for i in await Item.find({"qty": {"$gte": 1}}, sort="-qty", skip=1, limit=2)]
    assert names == ["d", "c"]
    names = [i.name for i in await Item.find(sort=[("name", 1)])]
    assert names == ["a", "b", "c", "d", "e"]


async def test_find_by_id_strings(orm: Environment) -> None:
    a, _, c = await make("a", "b", "c")
    found = await Item.find({"id": {"$in": [a.id, c.id]}}, sort="name")
    assert [i.name for i in found] == ["a", "c"]
    assert (await Item.find_one({"id": a.id}) or Item(name="?")).name == "a"


async def test_async_iteration_streams_every_document_in_batches(orm: Environment) -> None:
    await orm.database["items"].insert_many([{"name": f"n{i}", "qty": i} for i in range(250)])
    seen = [item.qty async for item in Item.find({}, sort="qty", batch_size=40)]
    assert seen == list(range(250))


async def test_breaking_out_of_iteration_early_is_fine(orm: Environment) -> None:
    await make("a", "b", "c")
    async for item in Item.find({}, sort="name", batch_size=1):
        if item.name == "b":
            break
    assert await Item.count() == 3


async def test_count_exists_and_find_one(orm: Environment) -> None:
    await make("a", "b", "b")
    assert await Item.count() == 3
    assert await Item.count({"name": "b"}) == 2
    assert await Item.exists({"name": "a"})
    assert not await Item.exists({"name": "z"})
    assert await Item.find_one({"name": "z"}) is None


async def test_save_sends_only_changed_fields(orm: Environment) -> None:
    (item,) = await make("pen")
    # Another writer changes a field this instance does not touch; it must survive our save.
    await orm.database["items"].update_one({"_id": ObjectId(item.id)}, {"$set": {"qty": 99}})
    item.name = "pencil"
    assert item.get_changes() == {"name": ("pen", "pencil")}
    await item.save()
    stored = await raw(orm, item) or {}
    assert (stored["name"], stored["qty"]) == ("pencil", 99)
    assert item.get_changes() == {}


async def test_none_in_a_field_defaulting_to_none_is_unset(orm: Environment) -> None:
    (item,) = await make("pen")
    item.note = "fragile"
    await item.save()
    assert (await raw(orm, item) or {})["note"] == "fragile"
    item.note = None
    await item.save()
    stored = await raw(orm, item) or {}
    assert "note" not in stored
    assert (await Item.get(item.id or "") or item).note is None


async def test_none_in_a_field_with_another_default_is_stored_as_null(orm: Environment) -> None:
    (item,) = await make("pen")
    item.label = None
    await item.save()
    assert (await raw(orm, item) or {})["label"] is None
    assert (await Item.get(item.id or "") or item).label is None


async def test_save_of_a_new_instance_inserts_it(orm: Environment) -> None:
    item = Item(name="pen")
    await item.save()
    assert item.id is not None and await Item.count() == 1


async def test_write_assigns_and_saves_and_checks_every_value_first(orm: Environment) -> None:
    (item,) = await make("pen")
    await item.write({"qty": 5, "seen_at": datetime(2026, 1, 2, tzinfo=UTC)})
    stored = await Item.get(item.id or "")
    assert stored is not None and stored.qty == 5
    assert stored.seen_at == datetime(2026, 1, 2, tzinfo=UTC)
    with pytest.raises(ValidationError, match=r"Item\.name: expected str"):
        await item.write({"qty": 6, "name": 1})
    assert item.qty == 5


async def test_delete_removes_the_document(orm: Environment) -> None:
    a, b = await make("a", "b")
    await a.delete()
    assert await Item.get(a.id or "") is None
    assert await Item.count() == 1
    with pytest.raises(DocumentNotFound):
        await a.delete()
    with pytest.raises(ValidationError, match="never stored"):
        await Item(name="x").delete()
    assert b.id is not None


async def test_update_of_a_document_deleted_elsewhere_raises_not_found(orm: Environment) -> None:
    (item,) = await make("pen")
    await orm.database["items"].delete_one({"_id": ObjectId(item.id)})
    item.qty = 3
    with pytest.raises(DocumentNotFound, match="not in 'items' any more"):
        await item.save()


async def test_create_twice_is_refused(orm: Environment) -> None:
    (item,) = await make("pen")
    with pytest.raises(ValidationError, match="already stored"):
        await item.create()


async def test_loaded_documents_with_missing_fields_get_defaults(orm: Environment) -> None:
    await orm.database["items"].insert_one({"name": "legacy", "unknown": 1})
    item = await Item.find_one({"name": "legacy"})
    assert item is not None and (item.qty, item.tags, item.note) == (0, [], None)
    assert item.get_changes() == {}
    item.qty = 1
    await item.save()
    assert (await raw(orm, item) or {})["unknown"] == 1


async def test_server_errors_surface_as_database_errors(orm: Environment) -> None:
    await make("pen")
    with pytest.raises(DatabaseError, match=r"find in 'items' failed: OperationFailure"):
        await Item.find({"qty": {"$nosuchoperator": 1}})
    with pytest.raises(DatabaseError, match=r"count in 'items' failed"):
        await Item.count({"qty": {"$nosuchoperator": 1}})
