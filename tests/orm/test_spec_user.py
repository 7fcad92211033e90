"""The spec's "Model Lifecycle Hooks" ``User`` example, as written, with two changes it needs
to run: ``has_active_orders`` is async (``Order.count`` is a coroutine, so the spec's sync
``Order.count(...) > 0`` cannot work) and ``_before_create`` also sets ``updated_at`` (a
required field the spec's snippet never sets). The search service is a recording fake; the
cache is the real one on Redis.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import earnorm
from earnorm._environment import Environment
from earnorm.base import BaseModel
from earnorm.events.decorators import after_write, before_create, before_delete

pytestmark = pytest.mark.anyio

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


def is_valid_email(email: str) -> bool:
    return bool(_EMAIL.fullmatch(email))


class Order(BaseModel):
    _collection = "orders"

    user_id: str
    status: str = "active"


class User(BaseModel):
    """User model with lifecycle hooks."""

    _collection = "users"

    username: str
    email: str
    status: str = "inactive"
    created_at: datetime
    updated_at: datetime

    @before_create
    async def _before_create(self) -> None:
        """Validate and prepare data before creating user."""
        self.created_at = datetime.utcnow()
        self.updated_at = self.created_at
        await self.validate_email()

    @after_write
    async def _after_write(self) -> None:
        """Update cache and search index after any write operation."""
        await self.invalidate_cache()
        await self.index_search()

    @before_delete
    async def _before_delete(self) -> None:
        """Check if user can be deleted."""
        if await self.has_active_orders():
            raise ValueError("Cannot delete user with active orders")

    async def validate_email(self) -> None:
        """Validate email format and uniqueness."""
        if not is_valid_email(self.email):
            raise ValueError("Invalid email format")
        existing = await User.find_one({"email": self.email})
        if existing and existing.id != self.id:
            raise ValueError("Email already exists")

    async def invalidate_cache(self) -> None:
        cache_key = f"user:{self.id}"
        await self._env.cache.delete(cache_key)

    async def index_search(self) -> None:
        await self._env.search.index_document(
            "users", self.id,
            {"username": self.username, "email": self.email, "status": self.status},
        )

    async def has_active_orders(self) -> bool:
        return await Order.count({"user_id": self.id, "status": "active"}) > 0


class RecordingSearch:
    def __init__(self) -> None:
        self.indexed: list[tuple[str, str | None, dict[str, Any]]] = []

    async def index_document(self, index: str, doc_id: str | None, doc: dict[str, Any]) -> None:
        self.indexed.append((index, doc_id, doc))


@pytest.fixture
def search(orm: Environment) -> RecordingSearch:
    fake = RecordingSearch()
    earnorm.env.register_service("search", fake)
    return fake


async def test_create_validates_stamps_and_indexes(search: RecordingSearch) -> None:
    user = User(username="ann", email="ann@example.com")
    await user.create()
    stored = await User.get(user.id or "")
    assert stored is not None and stored.email == "ann@example.com"
    # Naive datetimes are UTC to MongoDB, which keeps milliseconds; reads come back aware.
    assert abs(stored.created_at - user.created_at.replace(tzinfo=UTC)) < timedelta(
        milliseconds=1)
    assert search.indexed == [("users", user.id, {"username": "ann", "email": "ann@example.com",
                                                  "status": "inactive"})]


async def test_invalid_email_aborts_the_create(search: RecordingSearch) -> None:
    with pytest.raises(ValueError, match="Invalid email format"):
        await User(username="bob", email="not-an-email").create()
    assert await User.count() == 0
    assert search.indexed == []


async def test_duplicate_email_aborts_the_create(search: RecordingSearch) -> None:
    await User(username="ann", email="ann@example.com").create()
    with pytest.raises(ValueError, match="Email already exists"):
        await User(username="ann2", email="ann@example.com").create()
    assert await User.count() == 1
    assert len(search.indexed) == 1


async def test_every_write_invalidates_the_cache_and_reindexes(
    orm: Environment, search: RecordingSearch
) -> None:
    user = User(username="ann", email="ann@example.com")
    await user.create()
    await orm.cache.set(f"user:{user.id}", {"status": "inactive"}, ttl=60)
    await user.write({"status": "active"})
    assert await orm.cache.get(f"user:{user.id}") is None
    assert [doc["status"] for _, _, doc in search.indexed] == ["inactive", "active"]


async def test_user_with_active_orders_cannot_be_deleted(search: RecordingSearch) -> None:
    user = User(username="ann", email="ann@example.com")
    await user.create()
    order = Order(user_id=user.id or "")
    await order.create()
    with pytest.raises(ValueError, match="Cannot delete user with active orders"):
        await user.delete()
    assert await User.exists({"id": user.id})
    await order.write({"status": "shipped"})
    await user.delete()
    assert not await User.exists({"id": user.id})
