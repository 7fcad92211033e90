"""Lifecycle hooks: order, inheritance, aborting before hooks, after hooks and old/new values."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from bson import ObjectId

from earnorm import (
    BaseModel,
    ConfigError,
    after_create,
    after_delete,
    after_update,
    after_write,
    before_create,
    before_delete,
    before_update,
    before_write,
)
from earnorm._environment import Environment

pytestmark = pytest.mark.anyio


class Tracked(BaseModel):
    """Records every hook call, and what the database held at that moment."""

    _collection = "tracked"
    log: ClassVar[list[str]] = []

    name: str
    status: str = "new"

    async def _note(self, kind: str) -> None:
        stored = await type(self).count({"id": self.id}) if self.id else 0
        self.log.append(f"{kind}:{'stored' if stored else 'absent'}")

    @before_write
    async def _bw(self) -> None:
        await self._note("before_write")

    @before_create
    async def _bc(self) -> None:
        await self._note("before_create")

    @after_create
    async def _ac(self) -> None:
        await self._note("after_create")

    @after_write
    async def _aw(self) -> None:
        await self._note("after_write")

    @before_update
    async def _bu(self) -> None:
        await self._note("before_update")

    @after_update
    async def _au(self) -> None:
        await self._note("after_update")

    @before_delete
    async def _bd(self) -> None:
        await self._note("before_delete")

    @after_delete
    async def _ad(self) -> None:
        await self._note("after_delete")


@pytest.fixture
def log() -> list[str]:
    Tracked.log = []
    return Tracked.log


async def test_create_runs_write_then_create_hooks_around_the_insert(
    orm: Environment, log: list[str]
) -> None:
    await Tracked(name="a").create()
    assert log == ["before_write:absent", "before_create:absent",
                   "after_create:stored", "after_write:stored"]


async def test_update_runs_write_then_update_hooks_around_the_update(
    orm: Environment, log: list[str]
) -> None:
    obj = Tracked(name="a")
    await obj.create()
    log.clear()
    obj.status = "done"
    await obj.save()
    assert log == ["before_write:stored", "before_update:stored",
                   "after_update:stored", "after_write:stored"]


async def test_delete_runs_delete_hooks_only(orm: Environment, log: list[str]) -> None:
    obj = Tracked(name="a")
    await obj.create()
    log.clear()
    await obj.delete()
    assert log == ["before_delete:stored", "after_delete:absent"]


async def test_save_without_changes_writes_nothing_and_runs_no_hooks(
    orm: Environment, log: list[str]
) -> None:
    obj = Tracked(name="a")
    await obj.create()
    log.clear()
    await obj.save()
    assert log == []


class Base(BaseModel):
    _collection = "layered"
    calls: ClassVar[list[str]] = []

    name: str

    @before_create
    async def base_first(self) -> None:
        self.calls.append("base_first")

    @before_create
    async def base_second(self) -> None:
        self.calls.append("base_second")

    @before_create
    async def replaced(self) -> None:
        self.calls.append("base_replaced")

    @before_create
    async def dropped(self) -> None:
        self.calls.append("dropped")


class Child(Base):
    @before_create
    async def child_own(self) -> None:
        self.calls.append("child_own")

    @before_create
    async def replaced(self) -> None:
        self.calls.append("child_replaced")

    async def dropped(self) -> None:  # overridden without the decorator: no longer a hook
        self.calls.append("dropped-but-called")

    @before_create
    @before_update
    async def both(self) -> None:
        self.calls.append("both")


async def test_hooks_are_inherited_base_first_and_overrides_replace_in_place(
    orm: Environment
) -> None:
    Base.calls = []
    await Child(name="c").create()
    assert Base.calls == ["base_first", "base_second", "child_replaced", "child_own", "both"]


async def test_one_method_may_carry_several_hook_kinds(orm: Environment) -> None:
    Base.calls = []
    child = Child(name="c")
    await child.create()
    Base.calls = []
    child.name = "d"
    await child.save()
    assert Base.calls == ["both"]


def test_hook_decorators_refuse_sync_functions() -> None:
    with pytest.raises(ConfigError, match="@before_create needs an 'async def' method"):

        class Bad(BaseModel):
            @before_create  # type: ignore[type-var]  # the misuse under test
            def sync_hook(self) -> None: ...


class Guarded(BaseModel):
    _collection = "guarded"
    after_calls: ClassVar[list[str]] = []

    name: str
    locked: bool = False

    @before_write
    async def refuse_locked(self) -> None:
        if self.locked:
            raise PermissionError(f"{self.name} is locked")

    @before_delete
    async def refuse_delete_locked(self) -> None:
        if self.locked:
            raise PermissionError("locked documents cannot be deleted")

    @after_write
    async def after(self) -> None:
        self.after_calls.append(self.name)

    @after_delete
    async def after_del(self) -> None:
        self.after_calls.append(f"deleted {self.name}")


async def test_raising_before_create_hook_aborts_and_reaches_the_caller(
    orm: Environment
) -> None:
    Guarded.after_calls = []
    with pytest.raises(PermissionError, match="g is locked"):
        await Guarded(name="g", locked=True).create()
    assert await Guarded.count() == 0
    assert Guarded.after_calls == []


async def test_raising_before_update_hook_aborts_the_update(orm: Environment) -> None:
    g = Guarded(name="g")
    await g.create()
    Guarded.after_calls = []
    with pytest.raises(PermissionError):
        await g.write({"name": "renamed", "locked": True})
    stored = await orm.database["guarded"].find_one({"_id": ObjectId(g.id)})
    assert stored is not None and (stored["name"], stored["locked"]) == ("g", False)
    assert Guarded.after_calls == []
    assert g.get_changes() == {"name": ("g", "renamed"), "locked": (False, True)}


async def test_raising_before_delete_hook_keeps_the_document(orm: Environment) -> None:
    g = Guarded(name="g")
    await g.create()
    await orm.database["guarded"].update_one({"_id": ObjectId(g.id)}, {"$set": {"locked": True}})
    locked = await Guarded.get(g.id or "")
    assert locked is not None
    Guarded.after_calls = []
    with pytest.raises(PermissionError, match="cannot be deleted"):
        await locked.delete()
    assert await Guarded.count() == 1
    assert Guarded.after_calls == []


class Audited(BaseModel):
    _collection = "audited"
    seen: ClassVar[list[tuple[str, dict[str, tuple[Any, Any]]]]] = []

    status: str = "draft"
    title: str = ""

    @before_update
    async def before(self) -> None:
        self.seen.append(("before_update", self.get_changes()))

    @after_update
    async def after(self) -> None:
        self.seen.append(("after_update", self.get_changes()))

    @after_create
    async def created(self) -> None:
        self.seen.append(("after_create", self.get_changes()))


async def test_update_hooks_see_old_and_new_values(orm: Environment) -> None:
    doc = Audited(title="t")
    await doc.create()
    assert Audited.seen == [("after_create", {"status": (None, "draft"), "title": (None, "t")})]
    Audited.seen = []
    doc.status = "published"
    await doc.save()
    change = {"status": ("draft", "published")}
    assert Audited.seen == [("before_update", change), ("after_update", change)]
    assert doc.get_changes() == {}


class Stamping(BaseModel):
    _collection = "stamping"
    version: int = 0
    body: str = ""

    @before_update
    async def bump(self) -> None:
        self.version += 1


async def test_changes_made_by_a_before_hook_are_written(orm: Environment) -> None:
    doc = Stamping(body="a")
    await doc.create()
    doc.body = "b"
    await doc.save()
    stored = await orm.database["stamping"].find_one({"_id": ObjectId(doc.id)})
    assert stored is not None and (stored["body"], stored["version"]) == ("b", 1)


class Flaky(BaseModel):
    """An after hook that fails: the write stands, later after hooks do not run."""

    _collection = "flaky"
    calls: ClassVar[list[str]] = []

    name: str

    @after_create
    async def boom(self) -> None:
        self.calls.append("boom")
        raise RuntimeError("search index down")

    @after_write
    async def later(self) -> None:
        self.calls.append("later")


async def test_failing_after_hook_raises_but_the_write_stands(orm: Environment) -> None:
    Flaky.calls = []
    doc = Flaky(name="x")
    with pytest.raises(RuntimeError, match="search index down") as caught:
        await doc.create()
    assert any("was already written" in note for note in caught.value.__notes__)
    assert Flaky.calls == ["boom"]
    assert doc.id is not None
    assert await Flaky.count({"id": doc.id}) == 1
    assert doc.get_changes() == {}
    doc.name = "y"  # the instance is in step with the database: a save is an update
    Flaky.calls = []
    await doc.save()
    assert Flaky.calls == ["later"]
    assert await Flaky.count() == 1
